"""``vmclientctl vm install [<recipe>] | list | start | stop | eject | remove | upgrade |
restore <vm>``.

By default they call ``vmclient-provd`` over the system bus
(``org.vmclient.VMClient1.Provisioning``; root or the ``vmclient`` group) and
show its progress properties.  ``--local`` runs the same provisioning core in
the CLI's own process instead (as root: it needs the device keys and libvirt's
system connection), e.g. before the daemon is installed.  Long work shows
progress on stderr: bytes, rate and ETA.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from ..dbus import client as bus
from ..dbus import names
from ..errors import UsageError
from ..provision import config as pconfig
from ..provision.progress import PHASES
from ..tasks import at_most
from .progress import ProgressPrinter


def add_parser(sub: Any) -> None:
    p = sub.add_parser("vm", help="install, run, upgrade and remove VMs")
    p.add_argument("--local", action="store_true",
                   help="run the provisioning core in this process instead of vmclient-provd")
    p.add_argument("--config", type=Path,
                   help=f"with --local: configuration (default {pconfig.DEFAULT_PATH}; "
                   "the defaults if that does not exist)")
    p.set_defaults(check=check_args)
    cmds = p.add_subparsers(dest="command", required=True, metavar="ACTION")
    c = cmds.add_parser("install", help="install a VM from a recipe (TOML); without one: "
                        "the VMs IT assigned to this laptop")
    c.add_argument("recipe", type=Path, nargs="?")
    c.add_argument("--json", action="store_true", help="machine-readable output (the list)")
    c.set_defaults(func=install, render=render_install)
    c = cmds.add_parser("list", help="the VMs vmclient installed")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=list_vms, render=render_list)
    for name, func, help_ in (("start", start, "start a VM (unlocks its disks)"),
                              ("eject", eject, "take the install media (ISO) out of a VM")):
        c = cmds.add_parser(name, help=help_)
        c.add_argument("vm").completer = complete_vm  # type: ignore[attr-defined]
        c.set_defaults(func=func, render=str)
    c = cmds.add_parser("remove", help="stop and delete a VM, its key and disks (asks first)")
    c.add_argument("vm").completer = complete_vm  # type: ignore[attr-defined]
    c.add_argument("-y", "--yes", action="store_true",
                   help="do not ask (needed without a terminal)")
    c.set_defaults(func=remove, render=str)
    c = cmds.add_parser("stop", help="shut a VM down")
    c.add_argument("vm").completer = complete_vm  # type: ignore[attr-defined]
    c.add_argument("--force", action="store_true", help="power off at once")
    c.set_defaults(func=stop, render=str)
    c = cmds.add_parser("restore", help="restore a VM from its snapshots in the datacenter "
                        "(running where it was if the snapshot holds its memory)")
    c.add_argument("vm")
    c.add_argument("--snapshot", default="", help="snapshot id (default: the latest)")
    c.add_argument("--from", dest="from_device", default="",
                   help="the device that wrote the snapshots (after a rekey; its id)")
    c.add_argument("--stream", action="store_true",
                   help="start the VM within seconds while its disks stream in from the "
                        "datacenter (filled in the background)")
    c.set_defaults(func=restore, render=render_vm)
    c = cmds.add_parser("upgrade", help="new system disk from the catalog; user disks kept")
    c.add_argument("vm").completer = complete_vm  # type: ignore[attr-defined]
    c.add_argument("--version", type=int, default=0, help="image version (default: newest)")
    c.set_defaults(func=upgrade, render=render_vm)


def complete_vm(**_: Any) -> list[str]:
    """Shell completion of a VM argument (argcomplete): the installed VMs' names, from
    vmclient-provd; none when it does not answer within a few seconds."""
    import asyncio

    async def names() -> list[str]:
        async with bus.connected() as b:
            (rows,) = await _call(b, "List")
        return [str(row[0]) for row in rows]

    try:
        return asyncio.run(at_most(names(), 3))
    except Exception:  # a completion offers nothing rather than an error
        return []


def check_args(args: argparse.Namespace) -> None:
    if args.config is not None and not args.local:
        from ..errors import UsageError

        raise UsageError(f"--config {args.config}: only with --local (vmclient-provd reads "
                         f"its own, {pconfig.DEFAULT_PATH})")


def load_config(args: argparse.Namespace) -> pconfig.ProvisionConfig:
    """With --local: the configuration; one named by --config must exist."""
    if args.config is None:
        return pconfig.load(pconfig.DEFAULT_PATH)
    from .. import config

    return config.load(pconfig.ProvisionConfig, args.config, missing_ok=False)


@contextlib.asynccontextmanager
async def _provisioner(args: argparse.Namespace, *, new_keys: bool = False
                       ) -> AsyncIterator[Any]:
    """The provisioning core in this process; ``new_keys``: make the device keys if there
    are none yet (an install; every other command only reads what is there)."""
    from ..host.keys import DeviceKeys
    from ..provision.installer import Provisioner
    from ..provision.receiver import open_datacenter
    from ..transport import close_store
    from ..virt.libvirt import Hypervisor

    cfg = load_config(args)
    device = (DeviceKeys.load_or_create(cfg.device_dir) if new_keys
              else DeviceKeys(cfg.device_dir))
    remote, receiver = open_datacenter(cfg, device)
    hv = Hypervisor(cfg.libvirt_uri)
    printer = ProgressPrinter()
    try:
        await hv.connect()
        yield Provisioner(cfg, hv, device, receiver, report=printer)
    finally:
        printer.close()
        await hv.close()
        await close_store(remote)


def _vm(vm: Any) -> dict[str, Any]:
    return {"name": vm.name, "kind": vm.kind, "state": vm.state, "image": vm.image,
            "image_version": vm.image_version}


def _row(row: list[Any]) -> dict[str, Any]:
    name, kind, state, image, version = row
    return {"name": name, "kind": kind, "state": state, "image": image,
            "image_version": int(version)}


async def _call(b: Any, member: str, signature: str = "", body: list[Any] | None = None,
                unix_fds: list[int] | None = None) -> list[Any]:
    return await bus.call(b, names.PROVISION_PATH, names.PROVISION_IFACE, member, signature,
                          body, destination=names.PROVISION_BUS_NAME, unix_fds=unix_fds)


@contextlib.asynccontextmanager
async def _progress(b: Any) -> AsyncIterator[None]:
    """Show the daemon's progress properties while the block runs."""
    printer = ProgressPrinter()
    state: dict[str, Any] = {"Phase": 0, "CurrentVM": "", "BytesDone": 0, "BytesTotal": 0,
                             "Rate": 0.0, "Eta": -1.0}

    def on_change(changed: dict[str, Any]) -> None:
        if not changed.keys() & state.keys():  # (the background fills': ``vm list``)
            return
        state.update(changed)
        phase = PHASES[state["Phase"]] if 0 <= state["Phase"] < len(PHASES) else "unknown"
        if phase not in ("idle", "unknown"):
            printer.show(state["CurrentVM"], phase, state["BytesDone"], state["BytesTotal"],
                         state["Rate"], state["Eta"])

    try:
        async with bus.properties_watched(b, names.PROVISION_BUS_NAME, names.PROVISION_PATH,
                                          on_change):
            yield
    except (asyncio.CancelledError, KeyboardInterrupt):  # Ctrl-C
        printer.interrupted()
        raise
    finally:
        printer.close()


async def _find(b: Any, name: str) -> dict[str, Any]:
    from ..errors import VMNotFound

    (rows,) = await _call(b, "List")
    for row in rows:
        if row[0] == name:
            return _row(list(row))
    raise VMNotFound(name)


async def assigned(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What IT assigned to this laptop, with each VM's state here ("" if not installed)."""
    if args.local:
        from ..host import assigned as store
        cfg = load_config(args)
        rows: list[Any] = [[a.vm, a.image, a.order, a.outcome, a.detail]
                           for a in store.load(cfg.manage_dir)]
        async with _provisioner(args) as prov:
            installed = {v["name"]: v for v in map(_vm, await prov.list())}
    else:
        async with bus.connected() as b:
            (rows,) = await _call(b, "ListAssigned")
            (vms,) = await _call(b, "List")
            installed = {r["name"]: r for r in map(_row, map(list, vms))}
    return [{"name": str(r[0]), "image": str(r[1]), "order": int(r[2]), "outcome": str(r[3]),
             "detail": str(r[4]), "state": installed.get(str(r[0]), {}).get("state", "")}
            for r in rows]


async def install(args: argparse.Namespace) -> dict[str, Any] | list[dict[str, Any]]:
    if args.recipe is None:
        return await assigned(args)
    if args.local:
        async with _provisioner(args, new_keys=True) as prov:
            return _vm(await prov.install(args.recipe))
    import os

    from ..provision import media, spec

    try:
        text = args.recipe.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise spec.RecipeError(args.recipe, "(file)", f"cannot read: {exc}") from exc
    recipe = spec.parse(text, str(args.recipe))
    if recipe.image.media is None:
        async with bus.connected() as b:
            async with _progress(b):
                (name,) = await _call(b, "Install", "s", [text])
            return await _find(b, name)
    # a private VM's media: opened here, with the user's rights; provd gets the descriptor
    fd = media.open_for_caller(recipe.image.media)
    try:
        async with bus.connected(fds=True) as b:
            async with _progress(b):
                (name,) = await _call(b, "InstallFromMedia", "sh", [text, 0], unix_fds=[fd])
            return await _find(b, name)
    finally:
        os.close(fd)


async def upgrade(args: argparse.Namespace) -> dict[str, Any]:
    if args.local:
        async with _provisioner(args) as prov:
            return _vm(await prov.upgrade(args.vm, args.version))
    async with bus.connected() as b:
        async with _progress(b):
            await _call(b, "Upgrade", "su", [args.vm, args.version])
        return await _find(b, args.vm)


async def restore(args: argparse.Namespace) -> dict[str, Any]:
    if args.stream:
        return await _restore_streamed(args)
    if args.local:
        async with _provisioner(args) as prov:
            from ..provision.restore import restore as restore_vm
            return _vm(await restore_vm(prov, args.vm, snapshot=args.snapshot or None,
                                        from_device=args.from_device))
    async with bus.connected() as b:
        async with _progress(b):
            await _call(b, "Restore", "sss", [args.vm, args.snapshot, args.from_device])
        return await _find(b, args.vm)


async def _restore_streamed(args: argparse.Namespace) -> dict[str, Any]:
    """Through provd only: its nbdkit processes and the fill outlive this command."""
    if args.local:
        raise UsageError("--stream needs vmclient-provd (the fill runs in the daemon)")
    async with bus.connected() as b:
        async with _progress(b):
            await _call(b, "RestoreStreamed", "sss", [args.vm, args.snapshot, args.from_device])
        print(f"{args.vm}: running; its disks fill in the background from the datacenter "
              "(`vmclientctl vm list` shows how far). Until they are local "
              "the VM needs the network: without it, a read of what is not here yet waits, "
              "then the VM pauses until the datacenter answers again", file=sys.stderr)
        return await _find(b, args.vm)


async def list_vms(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.local:
        async with _provisioner(args) as prov:
            return [_vm(v) for v in await prov.list()]
    async with bus.connected() as b:
        (rows,) = await _call(b, "List")
        progress = await bus.get_all(b, names.PROVISION_PATH, names.PROVISION_IFACE,
                                     destination=names.PROVISION_BUS_NAME)
        return with_fill([_row(list(r)) for r in rows], progress)


def with_fill(vms: list[dict[str, Any]], props: dict[str, Any]) -> list[dict[str, Any]]:
    """Each VM whose disks provd is filling (its property ``Fills``: VM → bytes local,
    bytes total) gets ``fill``: the percent of its disks already local (its state says
    "streaming")."""
    fills = props.get("Fills", {})

    def percent(done: int, total: int) -> float:
        return round(100 * done / total, 1) if total else 0.0

    return [{**v, "fill": percent(*fills[v["name"]])} if v["name"] in fills else v
            for v in vms]


async def _simple(args: argparse.Namespace, local: Callable[[Any], Awaitable[None]],
                  member: str, signature: str, body: list[Any]) -> None:
    """A short command: through the core with --local, else one call to the daemon."""
    if args.local:
        async with _provisioner(args) as prov:
            await local(prov)
    else:
        async with bus.connected() as b:
            await _call(b, member, signature, body)


async def start(args: argparse.Namespace) -> str:
    await _simple(args, lambda p: p.start(args.vm), "Start", "s", [args.vm])
    return f"{args.vm}: started"


async def stop(args: argparse.Namespace) -> str:
    await _simple(args, lambda p: p.stop(args.vm, force=args.force), "Stop", "sb",
                  [args.vm, args.force])
    return f"{args.vm}: {'powered off' if args.force else 'shutdown requested'}"


async def eject(args: argparse.Namespace) -> str:
    if args.local:
        async with _provisioner(args) as prov:
            media = await prov.eject(args.vm)
    else:
        async with bus.connected() as b:
            (media,) = await _call(b, "Eject", "s", [args.vm])
    if not media:
        return f"{args.vm}: no install media attached"
    return f"{args.vm}: ejected {', '.join(media)}"


def confirm(question: str, *, yes: bool, flag: str = "--yes") -> None:
    """Ask on the terminal before destroying something; without one, ``flag`` is needed."""
    from ..errors import UsageError, VMClientError

    if yes:
        return
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise UsageError(f"{question} Not asked (no terminal): confirm with {flag}")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise VMClientError("not confirmed: nothing was changed")


async def remove(args: argparse.Namespace) -> str:
    confirm(f"Remove VM {args.vm!r}: its data key is destroyed and its disks deleted; "
            "nothing on this laptop can bring it back.", yes=args.yes)
    await _simple(args, lambda p: p.remove(args.vm), "Remove", "s", [args.vm])
    return f"{args.vm}: removed (key destroyed, disks deleted, definition removed)"


def render_vm(vm: dict[str, Any]) -> str:
    version = f" version {vm['image_version']}" if vm["image_version"] else ""
    return f"{vm['name']}: {vm['kind']} VM, {vm['state']}, image {vm['image']}{version}"


def render_install(result: dict[str, Any] | list[dict[str, Any]]) -> str:
    if isinstance(result, dict):
        return render_vm(result)
    if not result:
        return "IT assigned no VMs to this laptop (vmclientctl vm install RECIPE installs one)"
    rows = [("NAME", "IMAGE", "ORDER", "HERE")]
    rows += [(a["name"], a["image"], str(a["order"]),
              a["state"] or ("not installed" if a["outcome"] == "done"
                             else f"not installed: {a['detail']}")) for a in result]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  "
                     + r[3] for r in rows)


def render_list(vms: list[dict[str, Any]]) -> str:
    if not vms:
        return "no VMs installed"
    rows = [("NAME", "KIND", "STATE", "IMAGE")]
    rows += [(v["name"], v["kind"],
              v["state"] + (f", streaming {v['fill']:.1f}%" if "fill" in v else ""),
              v["image"] + (f" v{v['image_version']}" if v["image_version"] else ""))
             for v in vms]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  "
                     + r[3] for r in rows)
