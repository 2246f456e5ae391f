"""``vmclientctl vm install <recipe> | list | start | stop | remove | upgrade <vm>``.

These run the provisioning core in the CLI's own process (as root: it needs the
device keys and libvirt's system connection); the D-Bus service
``vmclient-provd`` is the later front for unprivileged users (docs/dbus-api.md).
Long work shows progress on stderr: bytes, rate and ETA.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from ..provision import config as pconfig
from ..provision.progress import Progress


def add_parser(sub: Any) -> None:
    p = sub.add_parser("vm", help="install, run, upgrade and remove VMs")
    p.add_argument("--config", type=Path, default=pconfig.DEFAULT_PATH,
                   help=f"provisioning configuration (default {pconfig.DEFAULT_PATH})")
    cmds = p.add_subparsers(dest="command", required=True, metavar="ACTION")
    c = cmds.add_parser("install", help="install a VM from a recipe (TOML)")
    c.add_argument("recipe", type=Path)
    c.set_defaults(func=install, render=render_vm)
    c = cmds.add_parser("list", help="the VMs vmclient installed")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=list_vms, render=render_list)
    for name, func, help_ in (("start", start, "start a VM (unlocks its disks)"),
                              ("remove", remove, "stop and delete a VM, its key and disks")):
        c = cmds.add_parser(name, help=help_)
        c.add_argument("vm")
        c.set_defaults(func=func, render=str)
    c = cmds.add_parser("stop", help="shut a VM down")
    c.add_argument("vm")
    c.add_argument("--force", action="store_true", help="power off at once")
    c.set_defaults(func=stop, render=str)
    c = cmds.add_parser("upgrade", help="new system disk from the catalog; user disks kept")
    c.add_argument("vm")
    c.add_argument("--version", type=int, default=0, help="image version (default: newest)")
    c.set_defaults(func=upgrade, render=render_vm)


class ProgressPrinter:
    """One status line: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out, self.tty = out, out.isatty()
        self.last, self.phase = 0.0, ""

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        changed = p.phase != self.phase
        finished = p.total and p.done >= p.total
        if not changed and not finished and now - self.last < (0.2 if self.tty else 5.0):
            return
        if changed and self.phase and self.tty:
            self.out.write("\n")
        self.last, self.phase = now, p.phase
        self.out.write(("\r" if self.tty else "") + p.line() + ("" if self.tty else "\n"))
        self.out.flush()

    def close(self) -> None:
        if self.tty and self.phase:
            self.out.write("\n")


@contextlib.asynccontextmanager
async def _provisioner(args: argparse.Namespace) -> AsyncIterator[Any]:
    from ..provision.installer import Provisioner
    from ..provision.keys import DeviceKeys, load_admin_key
    from ..provision.receiver import Receiver
    from ..store.localfs import LocalDirStore
    from ..virt.libvirt import Hypervisor

    cfg = pconfig.load(args.config)
    device = DeviceKeys.load_or_create(cfg.device_dir)
    admin = load_admin_key(cfg.repository.admin_key)
    receiver = None
    if admin is not None:
        receiver = Receiver(LocalDirStore(cfg.repository.path), admin, device, cfg.state_dir)
    hv = Hypervisor(cfg.libvirt_uri)
    printer = ProgressPrinter()
    await hv.connect()
    try:
        yield Provisioner(cfg, hv, device, receiver, report=printer)
    finally:
        printer.close()
        await hv.close()


def _vm(vm: Any) -> dict[str, Any]:
    return {"name": vm.name, "kind": vm.kind, "state": vm.state, "image": vm.image,
            "image_version": vm.image_version, "uuid": vm.uuid, "disks": vm.disks}


async def install(args: argparse.Namespace) -> dict[str, Any]:
    async with _provisioner(args) as prov:
        return _vm(await prov.install(args.recipe))


async def upgrade(args: argparse.Namespace) -> dict[str, Any]:
    async with _provisioner(args) as prov:
        return _vm(await prov.upgrade(args.vm, args.version))


async def list_vms(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with _provisioner(args) as prov:
        return [_vm(v) for v in await prov.list()]


async def start(args: argparse.Namespace) -> str:
    async with _provisioner(args) as prov:
        await prov.start(args.vm)
    return f"{args.vm}: started"


async def stop(args: argparse.Namespace) -> str:
    async with _provisioner(args) as prov:
        await prov.stop(args.vm, force=args.force)
    return f"{args.vm}: {'powered off' if args.force else 'shutdown requested'}"


async def remove(args: argparse.Namespace) -> str:
    async with _provisioner(args) as prov:
        await prov.remove(args.vm)
    return f"{args.vm}: removed (key destroyed, disks deleted, definition removed)"


def render_vm(vm: dict[str, Any]) -> str:
    version = f" version {vm['image_version']}" if vm["image_version"] else ""
    return f"{vm['name']}: {vm['kind']} VM, {vm['state']}, image {vm['image']}{version}"


def render_list(vms: list[dict[str, Any]]) -> str:
    if not vms:
        return "no VMs installed"
    rows = [("NAME", "KIND", "STATE", "IMAGE")]
    rows += [(v["name"], v["kind"], v["state"],
              v["image"] + (f" v{v['image_version']}" if v["image_version"] else ""))
             for v in vms]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  "
                     + r[3] for r in rows)
