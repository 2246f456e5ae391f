"""``vmclientctl sync status | now [VM] | verify VM [--snapshot S] | snapshots VM``.

They talk to ``vmclient-syncd`` (``org.vmclient.VMClient1.Sync``).  ``status``
reads properties (anyone); the others are methods (root or the ``vmclient``
group, else exit 77).  ``now`` shows the upload's progress on stderr and exits
0 when every VM synced, 75 (EX_TEMPFAIL) when one was held back (battery,
metered link, offline, …: the reason is printed), 1 when one failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from ..dbus import client as bus
from ..dbus import names
from ..errors import EXIT_ERROR, VMClientError
from ..sync.status import SyncOutcome, SyncState, label_of
from .progress import ProgressPrinter

EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL: try again later


class SyncNotDone(VMClientError):
    """{}"""

    def __init__(self, text: str, exit_code: int) -> None:
        super().__init__(text)
        self.exit_code = exit_code


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sync", help="VM snapshots in the datacenter: status, sync, verify")
    cmds = p.add_subparsers(dest="command", required=True, metavar="ACTION")
    c = cmds.add_parser("status", help="each VM's last sync, state, progress and next run")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=status, render=render_status)
    c = cmds.add_parser("now", help="sync now (one VM, or every VM)")
    c.add_argument("vm", nargs="?", default="")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=now, render=render_now)
    c = cmds.add_parser("verify", help="check a snapshot end to end without restoring it")
    c.add_argument("vm")
    c.add_argument("--snapshot", default="", help="snapshot (default: the latest)")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=verify, render=render_verify)
    c = cmds.add_parser("snapshots", help="a VM's snapshots in the datacenter")
    c.add_argument("vm")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=snapshots, render=render_snapshots)


async def _call(b: Any, member: str, signature: str = "", body: list[Any] | None = None
                ) -> list[Any]:
    return await bus.call(b, names.SYNC_PATH, names.SYNC_IFACE, member, signature, body,
                          destination=names.SYNC_BUS_NAME)


def _vm_status(name: str, p: dict[str, Any]) -> dict[str, Any]:
    v = {k: (x.value if hasattr(x, "value") else x) for k, x in p.items()}
    return {"name": name, "state": label_of(SyncState, v["State"]), "reason": v["Reason"],
            "last_sync": int(v["LastSync"]), "snapshot": v["LastSnapshot"],
            "bytes_done": int(v["BytesDone"]), "bytes_total": int(v["BytesTotal"]),
            "rate": float(v["Rate"]), "next_run": int(v["NextRun"])}


async def status(_: argparse.Namespace) -> dict[str, Any]:
    async with bus.connected() as b:
        p = await bus.get_all(b, names.SYNC_PATH, names.SYNC_IFACE,
                              destination=names.SYNC_BUS_NAME)
    return {"state": label_of(SyncState, p["State"]), "current": p["CurrentVM"],
            "lease": {"state": p["LeaseState"], "remaining": int(p["LeaseRemaining"])},
            "vms": [_vm_status(n, v) for n, v in sorted(p["VMs"].items())]}


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "never"


def render_status(st: dict[str, Any]) -> str:
    lines = []
    if not st["vms"]:
        lines.append("no synchronised VMs")
    else:
        rows = [("VM", "STATE", "LAST SYNC", "SNAPSHOT", "NEXT RUN")]
        notes = []
        for v in st["vms"]:
            state = v["state"]
            if state == "running" and v["bytes_total"]:
                state += f" {100 * v['bytes_done'] / v['bytes_total']:.0f}%"
            rows.append((v["name"], state, _when(v["last_sync"]), v["snapshot"] or "-",
                         _when(v["next_run"]) if v["next_run"] else "-"))
            if v["reason"]:
                notes.append(f"{v['name']}: {v['reason']}")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in rows]
        lines += notes
    if st["lease"]["state"]:
        lines.append(f"lease: {st['lease']['state']}")
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def _progress(b: Any) -> AsyncIterator[None]:
    """Show the daemon's progress properties while the block runs (stderr)."""
    printer = ProgressPrinter()
    state: dict[str, Any] = {"CurrentVM": "", "BytesDone": 0, "BytesTotal": 0, "Rate": 0.0}

    def on_change(changed: dict[str, Any]) -> None:
        state.update({k: v for k, v in changed.items() if k in state})
        done, total, rate = state["BytesDone"], state["BytesTotal"], state["Rate"]
        if state["CurrentVM"] and total:
            eta = (total - done) / rate if rate > 0 else -1.0
            printer.show(state["CurrentVM"], "upload", done, total, rate, eta)

    try:
        async with bus.properties_watched(b, names.SYNC_BUS_NAME, names.SYNC_PATH, on_change):
            yield
    finally:
        printer.close()


async def now(args: argparse.Namespace) -> list[dict[str, str]]:
    async with bus.connected() as b, _progress(b):
        (rows,) = await _call(b, "SyncNow", "s", [args.vm])
    results = [{"vm": vm, "outcome": label_of(SyncOutcome, outcome), "detail": detail}
               for vm, outcome, detail in rows]
    failed = [r for r in results if r["outcome"] == "failed"]
    skipped = [r for r in results if r["outcome"] == "skipped"]
    if failed or skipped:
        if args.json:
            print(json.dumps(results, indent=2, sort_keys=True))
        text = "; ".join(f"{r['vm']}: {r['outcome']}: {r['detail']}" for r in failed + skipped)
        raise SyncNotDone(text, EXIT_ERROR if failed else EXIT_TEMPFAIL)
    return results


def render_now(results: list[dict[str, str]]) -> str:
    if not results:
        return "no synchronised VMs"
    return "\n".join(f"{r['vm']}: synced, snapshot {r['detail']}" for r in results)


async def verify(args: argparse.Namespace) -> dict[str, Any]:
    async with bus.connected() as b:
        ((label, chunks, size),) = await _call(b, "Verify", "ss", [args.vm, args.snapshot])
    return {"vm": args.vm, "snapshot": label, "chunks": int(chunks), "bytes": int(size)}


def render_verify(r: dict[str, Any]) -> str:
    return (f"{r['vm']}: snapshot {r['snapshot']} verified: {r['chunks']} chunks, "
            f"{r['bytes'] / 2**20:.1f} MiB read, every one present, authentic and intact")


async def snapshots(args: argparse.Namespace) -> list[dict[str, Any]]:
    async with bus.connected() as b:
        (rows,) = await _call(b, "ListSnapshots", "s", [args.vm])
    return [{"snapshot": label, "seq": int(seq), "created": int(created), "bytes": int(size),
             "parent": parent, "latest": bool(latest)}
            for label, seq, created, size, parent, latest in rows]


def render_snapshots(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no snapshots"
    out = [f"{'SNAPSHOT':<12}{'CREATED':<18}{'SIZE':>10}  PARENT"]
    for r in rows:
        out.append(f"{r['snapshot']:<12}{_when(r['created']):<18}"
                   f"{r['bytes'] / 2**20:>6.0f} MiB  {r['parent'] or '-'}"
                   + ("  (latest)" if r["latest"] else ""))
    return "\n".join(out)
