"""``vmclient-admin host publish|channel``: host update bundles in the repository.

    vmclient-admin host publish BUNDLE --version V [--channel stable|testing [--rollout PCT]]
    vmclient-admin host channel CHANNEL VERSION --rollout PCT [--maintenance HH:MM-HH:MM|none]
    vmclient-admin host list [--json]

A RAUC bundle is published like an image version (:func:`.images.publish`): chunked,
encrypted, uploaded under ``images/host/`` (only the chunks no earlier bundle has),
its manifest pinned by the catalog, which lists it in its ``host`` section with
the release ``V`` (repository-format.md, "Host updates").  The bundle's content key
is wrapped for every enrolled device, so each laptop can read every bundle; a
device enrolled later gets it with the next ``host channel`` or its
``host-update`` order (:func:`entitle_devices`).  The bundle is not checked here:
the laptop's RAUC verifies its signature against the keyring in its image.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..manage import admin as it
from ..store import crypto, layout
from ..store.documents import Catalog, HostBundle, HostSection, ImageVersion, WrappedKey
from ..store.errors import ObjectNotFound
from ..store.hostformat import CHANNELS, HOST_IMAGE, RELEASE_RE, HostChannel, window_problem
from ..store.orders import DEVICE_ID_RE, DeviceRecord
from ..store.remote import RemoteStore
from ..store.repo import put_catalog, put_wrapped_key
from . import images, keys, session
from .progress import progress_bar
from .text import human_size, info, utc


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("host", help="host update bundles (RAUC): publish, channels")
    hsub = s.add_subparsers(dest="host_command", required=True)
    p = hsub.add_parser("publish", help="publish a RAUC bundle as host release VERSION")
    p.add_argument("bundle", type=Path)
    p.add_argument("--version", required=True, dest="release",
                   help="the release (as in the bundle's manifest), e.g. 2.1.0")
    p.add_argument("--channel", choices=CHANNELS, help="offer it on this channel at once")
    p.add_argument("--rollout", type=int, default=100, help="with --channel: percent of the "
                   "fleet (default 100)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_publish)
    c = hsub.add_parser("channel", help="offer a published release on a channel")
    c.add_argument("channel", choices=CHANNELS)
    c.add_argument("release", metavar="VERSION")
    c.add_argument("--rollout", type=int, required=True, help="percent of the fleet, 0-100")
    c.add_argument("--maintenance", metavar="HH:MM-HH:MM",
                   help="the laptops' maintenance window (their local time, e.g. 02:00-04:30 "
                   "or 22:30-05:00): a laptop with the update installed restarts into it "
                   "then, its VMs saved first; 'none': only the user restarts (default: the "
                   "channel's window stays as it is)")
    c.set_defaults(func=cmd_channel)
    ls = hsub.add_parser("list", help="published bundles and channels")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)


def check_release(release: str) -> str:
    if not RELEASE_RE.fullmatch(release):
        raise UsageError(f"host release {release!r}: digits and dots with an optional "
                         "-suffix or +suffix, e.g. 2.1.0 or 2.1.0-rc1")
    return release


def check_rollout(pct: int) -> int:
    if not 0 <= pct <= 100:
        raise UsageError(f"--rollout {pct}: a percentage, 0 to 100")
    return pct


def check_maintenance(window: str | None) -> str | None:
    """``--maintenance``: None keeps the channel's window, "" removes it."""
    if window is None or window == "none":
        return None if window is None else ""
    problem = window_problem(window)
    if problem:
        raise UsageError(f"--maintenance {window}: {problem}, or 'none'")
    return window


def with_channel(catalog: Catalog, channel: str, release: str, rollout: int,
                 now: int, maintenance: str | None = None) -> Catalog:
    host = catalog.host or HostSection()
    if host.find(release) is None:
        raise UsageError(f"no host release {release!r} is published (`vmclient-admin host "
                         "list`)")
    old = host.channels.get(channel)
    window = (old.maintenance if old else "") if maintenance is None else maintenance
    channels = {**host.channels, channel: HostChannel(release, rollout, window)}
    return replace(catalog, serial=catalog.serial + 1, issued=now,
                   host=replace(host, channels=channels))


async def entitle_devices(remote: RemoteStore, k: keys.AdminKeys,
                          devices: list[DeviceRecord]) -> int:
    """Wrap the bundles' content key for each device that lacks it; how many were wrapped."""
    content = await images.content_key(remote, HOST_IMAGE, k.admin, k.escrow, create=False)
    done = 0
    for rec in devices:
        recipient = crypto.x25519_public(rec.wrapping_key)
        path = layout.image_key(HOST_IMAGE, crypto.key_id(recipient))
        try:
            await remote.get(path, 0, 1)
            continue
        except ObjectNotFound:
            pass
        await put_wrapped_key(remote, path, k.admin,
                              WrappedKey.create(f"image:{HOST_IMAGE}", recipient, content))
        done += 1
    return done


async def read_devices(remote: RemoteStore, k: keys.AdminKeys) -> list[DeviceRecord]:
    """Every enrolled device's admin-signed record."""
    admin = k.admin.public_key()
    ids = sorted({e.path.split("/")[1] for e in await remote.list("devices")
                  if e.path.endswith("/device") and DEVICE_ID_RE.fullmatch(e.path.split("/")[1])})
    return [await it.device_record(remote, admin, d) for d in ids]


async def cmd_publish(args: argparse.Namespace, remote: RemoteStore) -> None:
    release = check_release(args.release)
    rollout = check_rollout(args.rollout)
    if not args.bundle.is_file():
        raise UsageError(f"{args.bundle}: no such bundle file")
    k, cfg, catalog = await session.open_repo(args, remote)
    if catalog.host is not None and catalog.host.find(release) is not None:
        raise UsageError(f"host release {release} is published already")

    def latest_of(c: Catalog) -> ImageVersion | None:
        return c.host.latest() if c.host else None

    def register(c: Catalog, entry: ImageVersion, now: int) -> Catalog:
        host = c.host or HostSection()
        if host.find(release) is not None:  # published meanwhile
            raise UsageError(f"host release {release} is published already")
        new = replace(c, serial=c.serial + 1, issued=now,
                      host=replace(host, bundles=(*host.bundles, HostBundle(release, entry))))
        if args.channel:
            new = replace(with_channel(new, args.channel, release, rollout, now),
                          serial=new.serial)
        return new

    with progress_bar(f"host publish {release}") as bar:
        done, new = await images.publish(
            remote, cfg, catalog, HOST_IMAGE, args.bundle, k.admin, k.escrow, on_size=bar.total,
            progress=bar.advance, latest_of=latest_of, register=register, raw=True)
    k.record_serial(cfg.repository, new.serial)
    wrapped = await entitle_devices(remote, k, await read_devices(remote, k))
    up = done.upload
    if args.json:
        print(json.dumps({"release": release, "version": done.version, "size": done.size,
                          "serial": done.serial, "new_chunks": up.chunks,
                          "uploaded": up.bytes, "channel": args.channel or "",
                          "devices_entitled": wrapped}, sort_keys=True), flush=True)
        return
    info(f"published host release {release} ({human_size(done.size)} bundle, "
         f"{up.chunks} new chunks, {human_size(up.bytes)} uploaded); catalog serial "
         f"{done.serial}" + (f"; on {args.channel} for {rollout} %" if args.channel else ""))


async def cmd_channel(args: argparse.Namespace, remote: RemoteStore) -> None:
    release, rollout = check_release(args.release), check_rollout(args.rollout)
    window = check_maintenance(args.maintenance)
    k, cfg, catalog = await session.open_repo(args, remote)
    new = with_channel(catalog, args.channel, release, rollout, int(time.time()), window)
    await entitle_devices(remote, k, await read_devices(remote, k))
    await put_catalog(remote, k.admin, new)
    k.record_serial(cfg.repository, new.serial)
    ch = new.host.channels[args.channel]  # type: ignore[union-attr]
    info(f"channel {args.channel}: host release {release} for {rollout} % of the fleet, "
         + (f"restarting at {ch.maintenance} (local time)" if ch.maintenance else
            "restarted by the user") + f" (catalog serial {new.serial})")


async def cmd_list(args: argparse.Namespace, remote: RemoteStore) -> None:
    _k, _cfg, catalog = await session.open_repo(args, remote)
    host = catalog.host or HostSection()
    if args.json:
        print(json.dumps(host.to_json(), indent=1, sort_keys=True), flush=True)
        return
    for b in host.bundles:
        print(f"  {b.release:<16} {human_size(b.image.size):>10}  {utc(b.image.created)}",
              flush=True)
    for name, ch in sorted(host.channels.items()):
        print(f"  channel {name}: {ch.release} for {ch.rollout} %"
              + (f", maintenance {ch.maintenance}" if ch.maintenance else ""), flush=True)
    if not host.bundles:
        print("  (no host bundles)", flush=True)
