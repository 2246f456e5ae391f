"""The D-Bus object ``/org/vmclient/VMClient1/Provisioning`` of ``vmclient-provd``.

Every method call is authorised first (root, group ``vmclient``, polkit action
``org.vmclient.VMClient1.provision.manage``) by a message handler installed in
front of dbus-fast's dispatch, and replied to exactly once: the result when the
work is done, or a D-Bus error named after the :class:`VMClientError`.  Long
work runs one operation at a time; its progress is in properties that emit
``PropertiesChanged`` (at most every 0.2 s while it runs).  The disks of streamed
restores fill in the background, several VMs at once: ``Fills`` has each of them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

from ..dbus import names
from ..dbus.guard import Member, install_method_guard, name_out_args
from ..errors import UsageError
from ..host import assigned
from . import media, spec
from .installer import Installed, Provisioner
from .progress import Progress
from .restorable import restorable
from .restore import restore as restore_vm
from .stream import Streams

log = logging.getLogger(__name__)
EMIT_EVERY = 0.2  # seconds at least between two PropertiesChanged of progress


class Phase(enum.IntEnum):
    UNKNOWN = 0
    IDLE = 1
    CATALOG = 2
    DOWNLOAD = 3
    ASSEMBLE = 4
    DEFINE = 5
    STREAM = 6
    FILL = 7  # no longer set: the fills are in ``Fills`` (the number stays taken)
    COPY = 8  # a private VM's media copied into provd's storage (InstallFromMedia)


class ProvisioningInterface(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(names.PROVISION_IFACE)
        self.progress = Progress(phase="idle")
        self._phase, self._last_emit = "idle", 0.0
        self.working = ""  # the long operation running ("restoring a VM"), "" if none
        self.fills: dict[str, tuple[int, int]] = {}  # vm → (bytes local, bytes total)
        self._fills_at = 0.0
        self._fills_later: asyncio.TimerHandle | None = None

    # Methods: declared for introspection; calls arrive through install_guard.
    @method()
    async def Eject(self, vm: s) -> "as":  # type: ignore[name-defined,valid-type]  # noqa: F722,F821
        raise NotImplementedError

    @method()
    async def Install(self, recipe_toml: s) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def InstallFromMedia(self, recipe_toml: s, media: h) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Upgrade(self, vm: s, version: u) -> u:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Restore(self, vm: s, snapshot: s, from_device: s) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def RestoreStreamed(self, vm: s, snapshot: s, from_device: s) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Start(self, vm: s):  # type: ignore[name-defined,no-untyped-def]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Stop(self, vm: s, force: b):  # type: ignore[name-defined,no-untyped-def]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Remove(self, vm: s):  # type: ignore[name-defined,no-untyped-def]  # noqa: F821
        raise NotImplementedError

    @method()
    async def List(self) -> a(ssssu):  # type: ignore[valid-type]  # noqa: F821
        raise NotImplementedError

    @method()
    async def ListAssigned(self) -> a(ssuss):  # type: ignore[valid-type]  # noqa: F821
        raise NotImplementedError

    @method()
    async def ListRestorable(self) -> a(sst):  # type: ignore[valid-type]  # noqa: F821
        raise NotImplementedError

    def introspect(self) -> Any:
        return name_out_args(super().introspect())

    @dbus_property(access=PropertyAccess.READ)
    def Phase(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return int(Phase[self.progress.phase.upper()])

    @dbus_property(access=PropertyAccess.READ)
    def CurrentVM(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.progress.vm

    @dbus_property(access=PropertyAccess.READ)
    def BytesDone(self) -> t:  # type: ignore[name-defined]  # noqa: F821
        return self.progress.done

    @dbus_property(access=PropertyAccess.READ)
    def BytesTotal(self) -> t:  # type: ignore[name-defined]  # noqa: F821
        return self.progress.total

    @dbus_property(access=PropertyAccess.READ)
    def Rate(self) -> d:  # type: ignore[name-defined]  # noqa: F821
        return float(self.progress.rate)

    @dbus_property(access=PropertyAccess.READ)
    def Eta(self) -> d:  # type: ignore[name-defined]  # noqa: F821
        return float(self.progress.eta)

    @dbus_property(access=PropertyAccess.READ)
    def Fills(self) -> "a{s(tt)}":  # type: ignore[valid-type]  # noqa: F722
        return self._fills_value()

    def _fills_value(self) -> dict[str, list[int]]:
        return {vm: [done, total] for vm, (done, total) in sorted(self.fills.items())}

    def fills_changed(self, fills: Mapping[str, tuple[int, int]]) -> None:
        """The streamed restores' sink (:class:`.stream.Streams`): every VM whose disks
        fill.  A VM that starts or ends filling is announced at once, progress at most
        every 0.2 s (the last change always: later, if it came too soon)."""
        added_or_gone = fills.keys() != self.fills.keys()
        self.fills = dict(fills)
        now = time.monotonic()
        if added_or_gone or now - self._fills_at >= EMIT_EVERY:
            self._emit_fills()
        elif self._fills_later is None:
            self._fills_later = asyncio.get_running_loop().call_later(
                self._fills_at + EMIT_EVERY - now, self._emit_fills)

    def _emit_fills(self) -> None:
        if self._fills_later is not None:
            self._fills_later.cancel()
            self._fills_later = None
        self._fills_at = time.monotonic()
        self.emit_properties_changed({"Fills": self._fills_value()})

    def _values(self) -> dict[str, Any]:
        p = self.progress
        return {"Phase": int(Phase[p.phase.upper()]), "CurrentVM": p.vm, "BytesDone": p.done,
                "BytesTotal": p.total, "Rate": float(p.rate), "Eta": float(p.eta)}

    def report(self, p: Progress) -> None:
        """The provisioner's progress sink: copy and emit, throttled."""
        phase_changed, self._phase = p.phase != self._phase, p.phase
        self.progress = p
        now = time.monotonic()
        if phase_changed or p.done >= p.total or now - self._last_emit >= EMIT_EVERY:
            self._last_emit = now
            self.emit_properties_changed(self._values())

    def idle(self) -> None:
        self.progress, self._phase, self.working = Progress(phase="idle"), "idle", ""
        self.emit_properties_changed(self._values())

    def begin_work(self, what: str) -> None:
        """A long operation starts (``what``: "restoring a VM"); a second one is refused,
        naming the one that runs."""
        if self.working:
            doing = f"{self.working} ({self.progress.vm})" if self.progress.vm else self.working
            raise UsageError(f"vmclient-provd is {doing}, one operation at a time: try "
                             "again when it is done")
        self.working = what


def _row(vm: Installed) -> list[Any]:
    return [vm.name, vm.kind, vm.state, vm.image, vm.image_version]


def install_guard(bus: MessageBus, iface: ProvisioningInterface, prov: Provisioner,
                  streams: Streams | None = None) -> None:
    """Authorise and dispatch the methods; one long operation (install, upgrade,
    restore) at a time.

    A VM name from the caller is checked (:func:`spec.vm_name`) before anything else
    sees it: it becomes part of paths (its disks' directory, its key, its recipe).
    """
    def long_work(what: str, fn: Callable[[list[Any]], Awaitable[list[Any]]]
                  ) -> Callable[[list[Any]], Awaitable[list[Any]]]:
        async def run(args: list[Any]) -> list[Any]:
            iface.begin_work(what)  # (refused while another runs: one at a time)
            try:
                return await fn(args)
            finally:
                iface.idle()
        return run

    async def install(args: list[Any]) -> list[Any]:
        untrusted_text = str(args[0])
        recipe = spec.parse(untrusted_text, "(recipe sent over D-Bus)")
        vm = await prov.install_recipe(recipe, untrusted_text)
        return [vm.name]

    async def install_from_media(args: list[Any]) -> list[Any]:
        untrusted_text, untrusted_fd = str(args[0]), int(args[1])
        recipe = spec.parse(untrusted_text, "(recipe sent over D-Bus)")
        if recipe.image.media is None:
            raise UsageError(f"{recipe.name}: InstallFromMedia is for a private VM's media "
                             "(iso, qcow2 or raw); a business VM: Install")
        media.check_fd(untrusted_fd, str(recipe.image.media))  # the checks install repeats
        vm = await prov.install_recipe(recipe, untrusted_text, media_fd=untrusted_fd)
        return [vm.name]

    async def upgrade(args: list[Any]) -> list[Any]:
        return [(await prov.upgrade(spec.vm_name(args[0]), int(args[1]))).image_version]

    async def restore(args: list[Any]) -> list[Any]:
        vm = await restore_vm(prov, spec.vm_name(args[0]), snapshot=str(args[1]) or None,
                              from_device=str(args[2]))
        return [vm.state]

    async def restore_streamed(args: list[Any]) -> list[Any]:
        if streams is None:
            raise UsageError("streamed restore is not available (provd runs without it)")
        vm = await streams.restore(spec.vm_name(args[0]), snapshot=str(args[1]) or None,
                                   from_device=str(args[2]))
        return [vm.state]

    async def start(args: list[Any]) -> list[Any]:
        await prov.start(spec.vm_name(args[0]))
        return []

    async def stop(args: list[Any]) -> list[Any]:
        await prov.stop(spec.vm_name(args[0]), force=bool(args[1]))
        return []

    async def eject(args: list[Any]) -> list[Any]:
        return [list(await prov.eject(spec.vm_name(args[0])))]

    async def remove(args: list[Any]) -> list[Any]:
        vm = spec.vm_name(args[0])
        if streams is not None:  # it may still stream: its fill and nbdkit stop first
            await streams.remove(vm)
        else:
            await prov.remove(vm)
        return []

    async def list_vms(_args: list[Any]) -> list[Any]:
        return [[_row(v) for v in await prov.list()]]

    async def list_assigned(_args: list[Any]) -> list[Any]:
        rows = await asyncio.to_thread(assigned.load, prov.cfg.manage_dir)
        return [[[a.vm, a.image, a.order, a.outcome, a.detail] for a in rows]]

    async def list_restorable(_args: list[Any]) -> list[Any]:
        return [[[r.vm, r.snapshot, r.time] for r in await restorable(prov)]]

    long_ops = {"Install": ("installing a VM", install),
                "InstallFromMedia": ("installing a VM", install_from_media),
                "Upgrade": ("upgrading a VM", upgrade),
                "Restore": ("restoring a VM", restore),
                "RestoreStreamed": ("restoring a VM", restore_streamed)}
    install_method_guard(bus, names.PROVISION_PATH, names.PROVISION_IFACE,
                         names.POLKIT_ACTION_PROVISION_MANAGE, {
                             **{name: Member(what, long_work(what, fn))
                                for name, (what, fn) in long_ops.items()},
                             "Start": Member("starting a VM", start),
                             "Stop": Member("stopping a VM", stop),
                             "Remove": Member("removing a VM", remove),
                             "Eject": Member("ejecting install media", eject),
                             "List": Member("listing VMs", list_vms),
                             "ListAssigned": Member("listing assigned VMs", list_assigned),
                             "ListRestorable": Member("listing the VMs to restore",
                                                      list_restorable)})
