"""The D-Bus object ``/org/vmclient/VMClient1/Power`` (interface ``…VMClient1.Power``).

Methods are dispatched by :func:`install_guard` so that every call is
authorised first (root, group ``vmclient``, polkit) and replied to exactly
once: the result, or a D-Bus error named after the :class:`VMClientError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dbus_fast import Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

from ..dbus import auth, names
from ..errors import VMClientError

log = logging.getLogger(__name__)


class PowerBackend(Protocol):
    def properties(self) -> dict[str, Any]: ...
    async def request_pause_all(self) -> list[str]: ...
    async def request_resume_all(self) -> list[str]: ...


_OUT_ARG_NAMES = {"PauseAll": "paused", "ResumeAll": "resumed"}


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

    def introspect(self) -> Any:
        """As the shipped XML: dbus-fast cannot name out-arguments itself."""
        node = super().introspect()
        for m in node.methods:
            for arg in m.out_args:
                arg.name = _OUT_ARG_NAMES.get(m.name, arg.name)
        return node

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
    def PausedByUs(self) -> a(ss):  # type: ignore[name-defined,valid-type]  # noqa: F821
        return self._p("PausedByUs")

    @dbus_property(access=PropertyAccess.READ)
    def OwnsLid(self) -> b:  # type: ignore[name-defined]  # noqa: F821
        return self._p("OwnsLid")

    @dbus_property(access=PropertyAccess.READ)
    def LidAction(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self._p("LidAction")

    def refresh(self) -> None:
        """Emit PropertiesChanged for whatever changed since the last call."""
        now = self.backend.properties()
        changed = {k: v for k, v in now.items() if self._last.get(k) != v}
        self._last = now
        if changed:
            self.emit_properties_changed(changed)


Handler = Callable[[], Awaitable[list[str]]]


def install_guard(bus: MessageBus, backend: PowerBackend) -> None:
    """Authorise and dispatch PauseAll/ResumeAll, replying exactly once."""
    handlers: dict[str, tuple[Handler, str]] = {
        "PauseAll": (backend.request_pause_all, "pausing every VM"),
        "ResumeAll": (backend.request_resume_all, "resuming every VM"),
    }
    tasks: set[asyncio.Task[None]] = set()

    async def run(msg: Message, handler: Handler, what: str) -> None:
        try:
            assert msg.sender is not None
            await auth.authorize(bus, msg.sender, names.POLKIT_ACTION_POWER_MANAGE, what)
            result = await handler()
            bus.send(Message.new_method_return(msg, "as", [result]))
        except VMClientError as exc:
            log.info("%s for %s: %s", msg.member, msg.sender, exc)
            bus.send(Message.new_error(msg, exc.dbus_name, str(exc)))
        except Exception as exc:  # a bug: still reply, then log the traceback
            log.exception("%s failed", msg.member)
            bus.send(Message.new_error(msg, names.ERROR_PREFIX + "Failed",
                                       f"internal error: {exc}"))

    def guard(msg: Message) -> bool:
        if (msg.message_type != MessageType.METHOD_CALL or msg.path != names.POWER_PATH
                or msg.interface not in (None, names.POWER_IFACE)
                or msg.member not in handlers or msg.signature):
            return False
        handler, what = handlers[msg.member]
        task = asyncio.get_running_loop().create_task(run(msg, handler, what))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    bus.add_message_handler(guard)
