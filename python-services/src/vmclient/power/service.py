"""The D-Bus object ``/org/vmclient/VMClient1/Power`` (interface ``…VMClient1.Power``).

Methods are dispatched by :func:`install_guard` so that every call is
authorised first (root, group ``vmclient``, polkit) and replied to exactly
once: the result, or a D-Bus error named after the :class:`VMClientError`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

from ..dbus import names
from ..dbus.guard import Member, WithFds, install_method_guard, name_out_args
from ..errors import UsageError

log = logging.getLogger(__name__)


class PowerBackend(Protocol):
    def properties(self) -> dict[str, Any]: ...
    async def request_pause_all(self) -> list[str]: ...
    async def request_resume_all(self) -> list[str]: ...
    async def request_pause_vm(self, vm: str) -> list[str]: ...
    async def request_resume_vm(self, vm: str) -> list[str]: ...
    def request_pause_delay(self, who: str) -> int: ...


class PowerInterface(ServiceInterface):
    def __init__(self, backend: PowerBackend) -> None:
        super().__init__(names.POWER_IFACE)
        self.backend = backend
        self._last: dict[str, Any] = backend.properties()

    # Methods: declared here for introspection; calls arrive through install_guard.
    @method()
    async def PauseAll(self) -> "as":  # type: ignore[name-defined,valid-type]  # noqa: F722
        return await self.backend.request_pause_all()

    @method()
    async def ResumeAll(self) -> "as":  # type: ignore[name-defined,valid-type]  # noqa: F722
        return await self.backend.request_resume_all()

    @method()
    async def PauseVM(self, vm: s) -> "as":  # type: ignore[name-defined,valid-type]  # noqa: F722,F821
        return await self.backend.request_pause_vm(vm)

    @method()
    async def ResumeVM(self, vm: s) -> "as":  # type: ignore[name-defined,valid-type]  # noqa: F722,F821
        return await self.backend.request_resume_vm(vm)

    @method()
    async def DelayPause(self) -> h:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError  # through install_guard: it hands out a descriptor

    def introspect(self) -> Any:
        return name_out_args(super().introspect())

    def _p(self, name: str) -> Any:
        return self._last[name]

    @dbus_property(access=PropertyAccess.READ)
    def LidState(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self._p("LidState")

    @dbus_property(access=PropertyAccess.READ)
    def PowerSource(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self._p("PowerSource")

    @dbus_property(access=PropertyAccess.READ)
    def BatteryPresent(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return self._p("BatteryPresent")

    @dbus_property(access=PropertyAccess.READ)
    def BatteryPercent(self) -> d:  # type: ignore[name-defined]  # noqa: F821
        return self._p("BatteryPercent")

    @dbus_property(access=PropertyAccess.READ)
    def Docked(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return self._p("Docked")

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self._p("State")

    @dbus_property(access=PropertyAccess.READ)
    def PausedByUs(self) -> a(su):  # type: ignore[name-defined,valid-type]  # noqa: F821
        return self._p("PausedByUs")

    @dbus_property(access=PropertyAccess.READ)
    def PauseCauses(self) -> a(sau):  # type: ignore[name-defined,valid-type]  # noqa: F821
        return self._p("PauseCauses")

    @dbus_property(access=PropertyAccess.READ)
    def OwnsLid(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return self._p("OwnsLid")

    @dbus_property(access=PropertyAccess.READ)
    def LidAction(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self._p("LidAction")

    @dbus_property(access=PropertyAccess.READ)
    def RestoreRefused(self) -> a(ss):  # type: ignore[name-defined,valid-type]  # noqa: F821
        return self._p("RestoreRefused")

    def refresh(self) -> None:
        """Emit PropertiesChanged for whatever changed since the last call."""
        now = self.backend.properties()
        changed = {k: v for k, v in now.items() if self._last.get(k) != v}
        self._last = now
        if changed:
            self.emit_properties_changed(changed)


def install_guard(bus: MessageBus, backend: PowerBackend) -> None:
    """Authorise and dispatch PauseAll/ResumeAll/PauseVM/ResumeVM/DelayPause, replying
    exactly once."""
    async def pause_all(_args: list[Any]) -> list[Any]:
        return [await backend.request_pause_all()]

    async def resume_all(_args: list[Any]) -> list[Any]:
        return [await backend.request_resume_all()]

    def vm_name(untrusted: Any) -> str:
        """A VM's name from a caller: only compared with the names of the VMs (the user's
        VMs have names of at most 31 characters: provision.spec.NAME_RE)."""
        if not isinstance(untrusted, str) or not 0 < len(untrusted) <= 64:
            raise UsageError(f"not a VM name: {str(untrusted)[:64]!r}")
        return untrusted

    async def pause_vm(args: list[Any]) -> list[Any]:
        return [await backend.request_pause_vm(vm_name(args[0]))]

    async def resume_vm(args: list[Any]) -> list[Any]:
        return [await backend.request_resume_vm(vm_name(args[0]))]

    async def delay_pause(args: list[Any]) -> WithFds:
        return WithFds([0], [backend.request_pause_delay(f"uid {args[0]}")])

    install_method_guard(bus, names.POWER_PATH, names.POWER_IFACE,
                         names.POLKIT_ACTION_POWER_MANAGE, {
                             "PauseAll": Member("pausing every VM", pause_all),
                             "ResumeAll": Member("resuming every VM", resume_all),
                             "PauseVM": Member("pausing a VM", pause_vm),
                             "ResumeVM": Member("resuming a VM", resume_vm),
                             "DelayPause": Member("delaying the VMs' pause", delay_pause,
                                                  with_caller=True)})
