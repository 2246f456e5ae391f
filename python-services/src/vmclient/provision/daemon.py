"""``vmclient-provd``: the provisioning core on the system bus."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from dbus_fast import BusType
from dbus_fast.aio import MessageBus

from .. import daemon as common
from .. import log as vlog
from ..dbus import names
from ..errors import EXIT_BUG, VMClientError
from ..store.localfs import LocalDirStore
from ..virt.libvirt import Hypervisor
from . import config as pconfig
from .installer import Provisioner
from .keys import DeviceKeys, load_admin_key
from .receiver import Receiver
from .service import ProvisioningInterface, install_guard

log = logging.getLogger("vmclient.provd")


async def run(cfg: pconfig.ProvisionConfig) -> None:
    stop = asyncio.Event()
    common.install_stop_handlers(asyncio.get_running_loop(), stop.set)
    device = DeviceKeys.load_or_create(cfg.device_dir)
    admin = load_admin_key(cfg.repository.admin_key)
    receiver = None
    if admin is not None:
        receiver = Receiver(LocalDirStore(cfg.repository.path), admin, device, cfg.state_dir)
    else:
        log.warning("no admin key at %s: business VMs cannot be installed",
                    cfg.repository.admin_key)
    hv = Hypervisor(cfg.libvirt_uri)
    await hv.connect(retry=True)
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        iface = ProvisioningInterface()
        prov = Provisioner(cfg, hv, device, receiver, report=iface.report)
        bus.export(names.PROVISION_PATH, iface)
        install_guard(bus, iface, prov)
        await bus.request_name(names.PROVISION_BUS_NAME)
        common.sd_notify("READY=1")
        log.info("ready on %s", names.PROVISION_BUS_NAME)
        await stop.wait()
        common.sd_notify("STOPPING=1")
    finally:
        bus.disconnect()
        await hv.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmclient-provd", description="vmclient provisioning")
    parser.add_argument("--config", type=Path, default=pconfig.DEFAULT_PATH,
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    args = parser.parse_args(argv)
    vlog.setup(args.debug)
    try:
        asyncio.run(run(pconfig.load(args.config)))
    except VMClientError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("vmclient-provd failed")
        return EXIT_BUG
    return 0


if __name__ == "__main__":
    sys.exit(main())
