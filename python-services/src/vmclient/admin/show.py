"""``vmclient-admin show IMAGE|DEVICE`` and ``list``: one thing in full, or everything in
brief; ``--json`` for both (sizes in bytes, times as Unix seconds).

An image: its versions, and who can read it (the recipients of its wrapped
content keys: enrolled devices by name, the escrow key, unknown ids as such).
A device: the fleet view (:func:`vmclient.manage.admin.devices`), its orders each
with its outcome (a pending wipe shown as WIPE PENDING), and the images assigned
to it.  Text from devices (names, report details) is shown escaped.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import UsageError
from ..manage import admin as it
from ..manage import fleetview
from ..manage.keyuse import KeyUse
from ..store import crypto, layout
from ..store.documents import Catalog
from ..store.format import shown
from ..store.orders import DEVICE_ID_RE, DeviceRecord
from ..store.remote import RemoteStore
from . import keys, session
from .orders import describe
from .text import human_size, utc


def say(text: str) -> None:
    print(text, flush=True)


async def recipients(remote: RemoteStore, name: str) -> list[str]:
    """Key ids an image's content key is wrapped for."""
    prefix = f"{layout.image_dir(name)}/keys"
    return sorted(e.path.rsplit("/", 1)[-1] for e in await remote.list(prefix)
                  if e.path == layout.image_key(name, e.path.rsplit("/", 1)[-1]))


def wrapping_id(rec: DeviceRecord) -> str:
    return crypto.key_id(crypto.x25519_public(rec.wrapping_key))


async def fleet_records(remote: RemoteStore, k: keys.AdminKeys) -> list[DeviceRecord]:
    admin = k.admin.public_key()
    return [await it.device_record(remote, admin, v.device)
            for v in await fleetview.devices(remote, admin)]


async def image_doc(remote: RemoteStore, k: keys.AdminKeys, catalog: Catalog,
                    name: str) -> dict[str, Any]:
    by_key = {wrapping_id(r): r for r in await fleet_records(remote, k)}
    escrow = crypto.key_id(k.escrow.public_key())
    readers = []
    for rid in await recipients(remote, name):
        rec = by_key.get(rid)
        readers.append({"key": rid, "escrow": rid == escrow,
                        "device": rec.device if rec else None,
                        "name": rec.name if rec else None})
    return {"image": name, "versions": [vars(v) for v in catalog.images.get(name, ())],
            "readers": readers}


async def device_doc(remote: RemoteStore, k: keys.AdminKeys, catalog: Catalog,
                     rec: DeviceRecord) -> dict[str, Any]:
    admin = k.admin.public_key()
    [view] = [v for v in await fleetview.devices(remote, admin) if v.device == rec.device]
    reports = {r.order: r for r in await it.reports_of(remote, admin, rec.device) if r.order}
    orders = []
    for o in await it.orders_of(remote, admin, rec.device):
        r = reports.get(o.seq)
        orders.append({"seq": o.seq, "issued": o.issued, "action": o.action, "args": o.args,
                       "describe": describe(o), "outcome": r.outcome if r else "pending",
                       "reported": r.time if r else 0, "detail": r.detail if r else ""})
    mine = wrapping_id(rec)
    assigned = [n for n in sorted(catalog.images) if mine in await recipients(remote, n)]
    return {**view.to_json(), "orders": orders, "images": assigned}


def render_image(doc: dict[str, Any]) -> str:
    rows = [f"image {doc['image']}"]
    for v in doc["versions"]:
        rows.append(f"  v{v['version']:<4} {human_size(v['size']):>10}  published "
                    f"{utc(v['created'])}  manifest {v['manifest'][:16]}")
    rows.append("  readable by:")
    for r in doc["readers"]:
        who = ("the escrow key (the admin)" if r["escrow"] else
               f"{shown(r['name'])} ({r['device']})" if r["device"] else
               "an unknown key (a device no longer enrolled?)")
        rows.append(f"    {who}  key {r['key']}")
    return "\n".join(rows)


def render_device(doc: dict[str, Any], now: int) -> str:
    state = ("SUSPECT" if doc["problem"] else
             f"WIPE PENDING (order {doc['wipe_pending']})" if doc["wipe_pending"] else
             "revoked" if doc["revoked"] else "wiped" if doc["wiped"] else "ok")
    lease = (f"until {utc(doc['lease_until'])} ({(doc['lease_until'] - now) // 86400:+d}d)"
             if doc["lease_until"] else "enrolment lease")
    rows = [f"device {shown(doc['name'])} ({doc['device']})",
            f"  state         {state}",
            f"  enrolled      {utc(doc['enrolled'])}",
            f"  last contact  {utc(doc['last_contact'])}",
            f"  lease         {lease}",
            f"  release       {shown(doc['release'] or '-')}",
            *([f"  host update   slot {shown(h.get('slot') or '-')}, running "
               f"{shown(h.get('release') or '-')}"
               + (f", {shown(h['installed'])} installed (restart pending)"
                  if h.get("installed") else "") + f": {shown(h.get('result') or '-')}"]
              if (h := doc.get("host")) else []),
            # the data partition opened with the recovery key, not by the TPM
            *[f"  recovery key  used {KeyUse(**u).describe()}"
              for u in doc.get("recovery_key_used", [])],
            f"  images        {', '.join(doc['images']) or '-'}",
            "  VMs           " + (", ".join(f"{v['vm']} #{v['seq']} synced {utc(v['time'])}"
                                          for v in doc["vms"]) or "-"),
            "  orders:"]
    for o in doc["orders"]:
        mark = "WIPE PENDING" if o["action"] == "wipe" and o["outcome"] == "pending" \
            else o["outcome"]
        when = f" {utc(o['reported'])}" if o["reported"] else ""
        detail = f"  {shown(o['detail'])}" if o["detail"] else ""
        rows.append(f"    {o['seq']:>4}  {utc(o['issued'])}  {o['describe']:<32} "
                    f"{mark}{when}{detail}")
    if not doc["orders"]:
        rows.append("    (none)")
    if doc["problem"]:
        rows.append(f"  problem: {shown(doc['problem'])}")
    return "\n".join(rows)


async def cmd_show(args: argparse.Namespace, remote: RemoteStore) -> None:
    import time
    k, _cfg, catalog = await session.open_repo(args, remote)
    what = args.what
    is_image = what in catalog.images
    device: DeviceRecord | None = None
    if DEVICE_ID_RE.fullmatch(what) or not is_image:
        try:
            device = await session.find_device(remote, k, what)
        except UsageError:
            if not is_image:
                raise UsageError(f"{what!r} is neither an image in the catalog (serial "
                                 f"{catalog.serial}) nor an enrolled device") from None
    if is_image and device is not None:
        raise UsageError(f"{what!r} names an image and a device: give the device's id")
    if device is None:
        doc = await image_doc(remote, k, catalog, what)
        say(json.dumps(doc, indent=1, sort_keys=True) if args.json else render_image(doc))
        return
    doc = await device_doc(remote, k, catalog, device)
    say(json.dumps(doc, indent=1, sort_keys=True) if args.json
        else render_device(doc, int(time.time())))
