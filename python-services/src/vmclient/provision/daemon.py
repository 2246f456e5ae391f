"""``vmclient-provd``: the provisioning core on the system bus."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from .. import daemon as common
from ..dbus import names
from ..host.keys import DeviceKeys
from ..transport import close_store
from ..virt.libvirt import Hypervisor
from . import config as pconfig
from .display import DisplayInterface, install_display_guard
from .installer import Provisioner
from .receiver import Receiver, open_datacenter
from .service import ProvisioningInterface, install_guard
from .stream import Streams

log = logging.getLogger("vmclient.provd")


async def run(cfg: pconfig.ProvisionConfig, config_path: Path = pconfig.DEFAULT_PATH) -> None:
    stop = asyncio.Event()
    common.install_stop_handlers(asyncio.get_running_loop(), stop.set)
    device = DeviceKeys.load_or_create(cfg.device_dir)
    remote, receiver = open_datacenter(cfg, device)
    if receiver is None:
        log.warning("no admin key at %s: business VMs cannot be installed",
                    cfg.repository.admin_key)
    hv = Hypervisor(cfg.libvirt_uri)
    try:
        await hv.connect(retry=True)
        await _serve(cfg, hv, device, receiver, stop, config_path)
    finally:
        await close_store(remote)
        await hv.close()


async def _serve(cfg: pconfig.ProvisionConfig, hv: Hypervisor, device: DeviceKeys,
                 receiver: Receiver | None, stop: asyncio.Event, config_path: Path) -> None:
    # Unix fds: a private VM's media comes as a file the caller opened (InstallFromMedia);
    # OpenDisplay hands out sockets to the VMs' displays.
    bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    try:
        iface = ProvisioningInterface()
        prov = Provisioner(cfg, hv, device, receiver, report=iface.report)
        bus.export(names.PROVISION_PATH, iface)
        streams = Streams(prov, config_path, report=iface.fills_changed)
        install_guard(bus, iface, prov, streams)
        bus.export(names.DISPLAY_PATH, DisplayInterface())
        install_display_guard(bus, prov)
        await bus.request_name(names.PROVISION_BUS_NAME)
        common.sd_notify("READY=1")
        log.info("ready on %s", names.PROVISION_BUS_NAME)
        resumed = await streams.resume_all()  # a fill a stop or power loss interrupted
        if resumed:
            log.info("streamed restores resumed: %s", ", ".join(resumed))
        await stop.wait()
        common.sd_notify("STOPPING=1")
        await streams.close()
    finally:
        bus.disconnect()


def main(argv: list[str] | None = None) -> int:
    async def start(config: Path) -> None:
        await run(pconfig.load(config), config)
    return common.main(argv, "vmclient-provd", "vmclient provisioning", pconfig.DEFAULT_PATH,
                       start)


if __name__ == "__main__":
    sys.exit(main())
