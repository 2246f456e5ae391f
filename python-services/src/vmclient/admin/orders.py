"""``vmclient-admin order DEVICE ACTION …``: issue, dry-run or cancel a signed order.

``order DEVICE cancel N`` replaces pending order N in place by an admin-signed
``cancel`` order of the same number (repository-format.md, orders): the laptop
reports it done and moves on.  It is refused once the device reported on N or
its status names N as executed; a laptop that fetched N in between executed it,
and refuses the changed object as a replay (its report says so).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manage import admin as it
from ..manage import fleetview
from ..store import layout
from ..store.format import signed_envelope
from ..store.orders import DeviceRecord, Order, window_problem
from ..store.remote import RemoteStore
from . import keys, session
from .session import find_device
from .text import info, utc

ACTIONS = {"assign": "assign", "unassign": "unassign", "renew": "renew-lease",
           "renew-lease": "renew-lease", "lock": "lock", "unlock": "unlock", "wipe": "wipe",
           "cancel": "cancel", "host-update": "host-update"}
DEFAULTS = {"renew-lease": ["lease_until=+14d"], "wipe": ["include_private=no"]}


def say(text: str) -> None:
    print(text, flush=True)


async def cmd_order(args: argparse.Namespace, remote: RemoteStore) -> None:
    k = await session.open_keys(args, remote)
    rec = await find_device(remote, k, args.device)
    action = ACTIONS[args.action]
    now = int(time.time())
    if action == "cancel":
        return await _cancel(args, remote, k, rec, now)
    words = list(args.args)
    given = {w.partition("=")[0] for w in words}
    words += [d for d in DEFAULTS.get(action, []) if d.partition("=")[0] not in given]
    words = [_recipe_file(w) if w.startswith("recipe=") else w for w in words]
    if action == "host-update":
        words = await _host_update(args, remote, k, rec, words)
    values = it.order_args(action, words, now)
    if action == "wipe" and not (args.yes or args.dry_run):
        raise UsageError(f"a wipe destroys the business VMs of {rec.name} ({rec.device}): "
                         "add --yes to issue it")
    if args.dry_run:
        return await _dry_run_order(args, remote, k, rec, action, values, now)
    order = await it.issue_order(remote, k.admin, rec.device, action, values, now,
                                 numbers=k.orders)
    if args.json:
        say(json.dumps(_order_json(order, rec), indent=1, sort_keys=True))
        return
    info(f"order {order.seq} for {rec.name} ({rec.device}): {describe(order)}")
    info("the device executes it when it next reaches the datacenter; "
         f"see `vmclient-admin reports {rec.name}`")


def _order_json(order: Order, rec: DeviceRecord, **extra: Any) -> dict[str, Any]:
    return {"device": rec.device, "name": rec.name, "seq": order.seq, "issued": order.issued,
            "action": order.action, "args": order.args, "describe": describe(order), **extra}


async def _dry_run_order(args: argparse.Namespace, remote: RemoteStore, k: keys.AdminKeys,
                         rec: DeviceRecord, action: str, values: dict[str, Any],
                         now: int) -> None:
    """What ``order`` would issue: every check made, nothing written."""
    admin = k.admin.public_key()
    revoked = await it.revocation(remote, admin, rec.device)
    if revoked is not None:
        raise UsageError(f"device {rec.name} ({rec.device}) was revoked on "
                         f"{utc(revoked.revoked)}: no further orders")
    listed = max((o.seq for o in await it.orders_of(remote, admin, rec.device)), default=0)
    order = Order(rec.device, max(listed, k.orders.last(rec.device)) + 1, now, action, values)
    Order.parse(order.to_bytes(), rec.device, order.seq, "(new order)")
    if args.json:
        say(json.dumps(_order_json(order, rec, dry_run=True), indent=1, sort_keys=True))
    else:
        say(f"dry run: would issue order {order.seq} for {rec.name} ({rec.device}): "
            f"{describe(order)}; nothing written")


async def _cancel(args: argparse.Namespace, remote: RemoteStore, k: keys.AdminKeys,
                  rec: DeviceRecord, now: int) -> None:
    """Replace pending order N in place by a signed ``cancel`` (repository-format.md, orders)."""
    if len(args.args) != 1 or not args.args[0].isdigit():
        raise UsageError("order DEVICE cancel N: N is the number of a pending order "
                         "(`vmclient-admin show DEVICE` lists them)")
    seq = int(args.args[0])
    admin = k.admin.public_key()
    old = await it.signed_order(remote, admin, rec.device, seq)
    if old is None:
        raise UsageError(f"{rec.name} ({rec.device}) has no order {seq} signed by this admin")
    if old.action == "cancel":
        raise UsageError(f"order {seq} of {rec.name} is cancelled already")
    ran = [r for r in await it.reports_of(remote, admin, rec.device) if r.order == seq]
    st = await fleetview.device_status(remote, rec)
    if ran:
        raise UsageError(f"order {seq} ({describe(old)}) already ran on {rec.name}: reported "
                         f"{ran[-1].outcome} on {utc(ran[-1].time)}; too late to cancel")
    if st is not None and st.last_order >= seq:
        raise UsageError(f"order {seq} ({describe(old)}) already ran on {rec.name} (its "
                         f"status of {utc(st.time)} names order {st.last_order}); too late "
                         "to cancel")
    new = Order(rec.device, seq, now, "cancel", {"cancelled": old.action})
    Order.parse(new.to_bytes(), rec.device, seq, "(new order)")
    if not args.dry_run:
        await remote.put_atomic(layout.order(rec.device, seq), signed_envelope(
            k.admin, "order", new.object_id, new.to_bytes()), exclusive=False)
    if args.json:
        say(json.dumps(_order_json(new, rec, dry_run=args.dry_run), indent=1, sort_keys=True))
        return
    verb = "dry run: would cancel" if args.dry_run else "cancelled"
    info(f"{verb} order {seq} for {rec.name} ({rec.device}): {describe(old)}")
    if not args.dry_run:
        info("unless the device fetched it before now (then its report will say so), it "
             f"will not run; see `vmclient-admin reports {rec.name}`")


async def _host_update(args: argparse.Namespace, remote: RemoteStore, k: keys.AdminKeys,
                       rec: DeviceRecord, words: list[str]) -> list[str]:
    """``host-update VERSION [downgrade=yes] [maintenance=HH:MM-HH:MM]``: the release must
    be published; the device gets the bundles' content key if it lacks it.  The window
    is this device's, instead of its channel's, for the restart into this release."""
    from ..store.repo import get_catalog
    from .hostupdates import check_release, entitle_devices
    words = [w if "=" in w else f"release={w}" for w in words]
    release = next((w.partition("=")[2] for w in words if w.startswith("release=")), None)
    if release is None:
        raise UsageError("order DEVICE host-update VERSION [downgrade=yes] "
                         "[maintenance=HH:MM-HH:MM]")
    check_release(release)
    for w in words:
        if w.startswith("maintenance=") and window_problem(w.partition("=")[2]):
            raise UsageError(f"{w}: {window_problem(w.partition('=')[2])}")
    cfg = await session.open_config(args, remote, k)
    catalog, _d = await get_catalog(remote, k.admin.public_key(), cfg.repository)
    if catalog.host is None or catalog.host.find(release) is None:
        raise UsageError(f"no host release {release!r} is published (`vmclient-admin host "
                         "list`)")
    await entitle_devices(remote, k, [rec])
    return words


def _recipe_file(word: str) -> str:
    value = word.partition("=")[2]
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"recipe={value}: no such recipe file")
    return "recipe=" + path.read_text()


def describe(order: Order) -> str:
    a = order.args
    if order.action == "renew-lease":
        return f"renew the lease until {utc(int(a['lease_until']))}"
    if order.action == "wipe":
        return "WIPE business VMs" + (" and private VMs" if a["include_private"] else "")
    if order.action == "cancel":
        return f"cancelled (was {a['cancelled']})"
    if order.action == "host-update":
        return (f"host update to {a['release']}"
                + (" (DOWNGRADE allowed)" if a.get("downgrade") else "")
                + (f", restart in {a['maintenance']}" if a.get("maintenance") else ""))
    if order.action == "rekey":
        what = (("restore and start" if a.get("start") else "restore") if a.get("restore")
                else "rekey")
        return f"{what} {a['vm']} from {a['from_device']} (snapshot seq >= {a['min_seq']})"
    if "vm" in a:
        return f"{order.action} {a['vm']}"
    return order.action
