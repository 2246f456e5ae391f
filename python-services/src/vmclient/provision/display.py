"""The D-Bus object ``/org/vmclient/VMClient1/Display`` of ``vmclient-provd``.

The shell (``vmclient-shell``, docs/shell.md) never talks to libvirt: it asks
here for the VMs it may show and for connections to their displays.  Both
methods are authorised by the polkit action
``org.vmclient.VMClient1.open-display`` (the seat's active session; root and
the ``vmclient`` group as for every other method), so a process outside the
session cannot see or type into a VM.  ``OpenDisplay`` hands out a socket
connected to the VM's SPICE server (``virDomainOpenGraphicsFD``); a SPICE
client needs one per channel (main, display, inputs, cursor, ...), so it calls
``OpenDisplay`` once per channel.
"""

from __future__ import annotations

import logging
from typing import Any

from dbus_fast.aio import MessageBus
from dbus_fast.service import ServiceInterface, method

from ..dbus import names
from ..dbus.guard import Member, WithFds, install_method_guard, name_out_args
from ..virt.libvirt import open_graphics_fd
from .installer import Provisioner

log = logging.getLogger(__name__)


class DisplayInterface(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(names.DISPLAY_IFACE)

    # Methods: declared for introspection; calls arrive through install_display_guard.
    @method()
    async def OpenDisplay(self, vm: s) -> h:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def ListVMs(self) -> a(sss):  # type: ignore[valid-type]  # noqa: F821
        raise NotImplementedError

    def introspect(self) -> Any:
        return name_out_args(super().introspect())


def install_display_guard(bus: MessageBus, prov: Provisioner) -> None:
    """Authorise (open-display) and dispatch the Display methods."""

    async def open_display(args: list[Any]) -> WithFds:
        untrusted_vm = str(args[0])
        vm = await prov.get(untrusted_vm)  # VMNotFound unless it is one of ours
        del untrusted_vm
        fd = await open_graphics_fd(prov.hv, vm.uuid, vm.name)
        log.debug("display connection to %s handed out", vm.name)
        return WithFds([0], [fd])

    async def list_vms(_args: list[Any]) -> list[Any]:
        return [[[v.name, v.kind, v.state] for v in await prov.list()]]

    install_method_guard(bus, names.DISPLAY_PATH, names.DISPLAY_IFACE,
                         names.POLKIT_ACTION_OPEN_DISPLAY, {
                             "OpenDisplay": Member("showing a VM's display", open_display),
                             "ListVMs": Member("listing the VMs to show", list_vms)})
