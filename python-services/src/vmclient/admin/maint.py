"""Keeping the image side of the repository honest and small: ``check``, ``unpublish``,
``forget`` and ``prune`` (as restic's and borg's).

* ``check [--read-data]``: every object the catalog reaches verifies — per listed
  image, the escrow copy of its content key, every listed version's manifest (its
  digest pinned by the catalog), the chunk indexes, and every chunk a version needs
  present in an index; with ``--read-data`` each of those chunks is read and opened
  (AEAD, length, chunk id).  The enrolled devices' records and objects are checked
  as ``devices`` reads them.  Writes nothing; problems are listed, then exit 65.
* ``unpublish IMAGE [VERSION …]`` and ``forget IMAGE --keep-last N``: versions (or
  the whole image) leave the catalog, re-signed with the next serial, under the
  image's lock.  Laptops stop seeing them at once; their data stays until ``prune``.
* ``prune IMAGE``: under the image's lock, manifests the catalog no longer lists
  are deleted, then packs no listed version needs (partly used ones repacked:
  :func:`vmclient.sync.maintenance.prune_packs`, as for VM snapshots).  An image
  with no listed version left is removed entirely (its keys included).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import EXIT_DATAERR, UsageError, VMClientError
from ..manage import fleetview
from ..store import layout
from ..store.chunkstore import ChunkStore
from ..store.documents import Catalog, ImageVersion
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.format import shown
from ..store.holding import holding
from ..store.hostformat import HOST_IMAGE
from ..store.objects import Manifest
from ..store.remote import RemoteStore
from ..store.repair import check_blobs
from ..store.repo import get_catalog, get_image_manifest, put_catalog
from ..sync.maintenance import PruneResult, prune_packs
from . import images, keys, session
from .text import info


class CheckFailed(VMClientError):
    """{}"""

    exit_code = EXIT_DATAERR


@dataclass
class CheckResult:
    images: int = 0
    versions: int = 0
    chunks: int = 0  # distinct chunks the listed versions need
    read: int = 0  # of which read and opened (--read-data)
    devices: int = 0
    problems: list[str] = field(default_factory=list)


async def check(remote: RemoteStore, k: keys.AdminKeys, catalog: Catalog, *,
                read_data: bool = False) -> CheckResult:
    res = CheckResult()
    trees = dict(catalog.images)
    if catalog.host is not None and catalog.host.bundles:  # host bundles: an image's tree
        trees[HOST_IMAGE] = tuple(b.image for b in catalog.host.bundles)
    for name, versions in sorted(trees.items()):
        res.images += 1
        try:
            content = await images.content_key(remote, name, k.admin, k.escrow, create=False)
        except RemoteIntegrityError as exc:
            res.problems.append(f"image {name}: {exc}")
            continue
        needed: set[bytes] = set()
        for v in versions:
            res.versions += 1
            try:
                m = await get_image_manifest(remote, content, name, v.version, v.manifest)
            except (RemoteIntegrityError, ObjectNotFound) as exc:
                res.problems.append(f"image {name} v{v.version}: {exc}")
                continue
            needed |= m.stored_ids()
        store = ChunkStore(remote, layout.image_store(name), content)
        try:
            index = await store.load_index()
        except RemoteIntegrityError as exc:
            res.problems.append(f"image {name}: {exc}")
            continue
        res.problems += [f"image {name}: {what} is damaged ({why})"
                         for what, why in sorted(store.damaged.items())]
        res.chunks += len(needed)
        missing = needed - set(index)
        if missing:
            res.problems.append(f"image {name}: {len(missing)} chunk(s) a listed version "
                                f"needs are in no index (e.g. {min(missing).hex()})")
        if read_data:
            refs = {cid: index[cid] for cid in needed if cid in index}
            _good, bad = await check_blobs(store, refs)
            res.read += len(refs)
            res.problems += [f"image {name}: chunk {cid.hex()}: {why}"
                             for cid, why in sorted(bad.items())]
    for view in await fleetview.devices(remote, k.admin.public_key()):
        res.devices += 1
        if view.problem:
            res.problems.append(f"device {view.name} ({view.device}): {view.problem}")
    return res


def without(catalog: Catalog, name: str, drop: set[int] | None, now: int) -> Catalog:
    """``catalog`` without versions ``drop`` of ``name`` (None: the image), next serial."""
    imgs = dict(catalog.images)
    kept: tuple[ImageVersion, ...] = () if drop is None else \
        tuple(v for v in imgs.get(name, ()) if v.version not in drop)
    if kept:
        imgs[name] = kept
    else:
        imgs.pop(name, None)
    return replace(catalog, serial=catalog.serial + 1, issued=now, images=imgs)


async def unpublish(remote: RemoteStore, k: keys.AdminKeys, catalog: Catalog, name: str,
                    drop: set[int] | None, now: int, *, dry_run: bool = False) -> Catalog:
    """Re-sign the catalog without those versions, under the image's lock."""
    token = await remote.lock(layout.image_lock(name), f"vmclient-admin unpublish {name}")
    async with holding(remote, token):
        fresh, _d = await get_catalog(remote, k.admin.public_key(), catalog.repository,
                                      known_serial=catalog.serial)
        new = without(fresh, name, drop, now)
        if not dry_run:
            await put_catalog(remote, k.admin, new)
            k.record_serial(new.repository, new.serial)
    return new


async def prune(remote: RemoteStore, k: keys.AdminKeys, catalog: Catalog, name: str, *,
                dry_run: bool = False) -> tuple[list[int], PruneResult | None]:
    """(unlisted manifests deleted, pack result; None if the whole image was removed)."""
    token = await remote.lock(layout.image_lock(name), f"vmclient-admin prune {name}")
    async with holding(remote, token):
        fresh, _d = await get_catalog(remote, k.admin.public_key(), catalog.repository,
                                      known_serial=catalog.serial)
        listed = {v.version: v for v in fresh.images.get(name, ())}
        stale = []
        for e in await remote.list(f"{layout.image_dir(name)}/versions"):
            parts = e.path.split("/")
            if len(parts) == 5 and parts[3].isdigit() and \
                    e.path == layout.image_manifest(name, int(parts[3])) and \
                    int(parts[3]) not in listed:
                stale.append(int(parts[3]))
        if dry_run:
            return sorted(stale), None
        if not listed:
            for e in await remote.list(layout.image_dir(name)):
                if e.path != layout.image_lock(name):
                    await remote.delete(e.path)
            return sorted(stale), None
        for v in stale:
            await remote.delete(layout.image_manifest(name, v))
        content = await images.content_key(remote, name, k.admin, k.escrow, create=False)
        kept: list[Manifest] = [
            await get_image_manifest(remote, content, name, v.version, v.manifest)
            for v in listed.values()]
        result = PruneResult(sorted(listed), sorted(stale))
        await prune_packs(remote, content, layout.image_store(name), kept, result)
        return sorted(stale), result


# --- the commands ----------------------------------------------------------------------------

def add_parsers(sub: Any) -> None:
    s = sub.add_parser("check", help="verify every object the catalog reaches (and the "
                       "devices' records); --read-data also reads every chunk")
    s.add_argument("--read-data", action="store_true",
                   help="read and authenticate every chunk a listed version needs")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_check)
    s = sub.add_parser("unpublish", help="take an image (or some of its versions) out of "
                       "the catalog; `prune` then deletes the data")
    s.add_argument("image")
    s.add_argument("versions", nargs="*", type=int, help="versions (default: all)")
    s.add_argument("--dry-run", action="store_true", help="show, change nothing")
    s.set_defaults(func=cmd_unpublish)
    s = sub.add_parser("forget", help="take all but the newest N versions of an image out "
                       "of the catalog; `prune` then deletes their data")
    s.add_argument("image")
    s.add_argument("--keep-last", type=int, required=True, metavar="N")
    s.add_argument("--dry-run", action="store_true", help="show, change nothing")
    s.set_defaults(func=cmd_unpublish)
    s = sub.add_parser("prune", help="delete the data of image versions the catalog no "
                       "longer lists")
    s.add_argument("image")
    s.add_argument("--dry-run", action="store_true", help="show, delete nothing")
    s.set_defaults(func=cmd_prune)


async def cmd_check(args: argparse.Namespace, remote: RemoteStore) -> None:
    k, _cfg, catalog = await session.open_repo(args, remote)
    res = await check(remote, k, catalog, read_data=args.read_data)
    if args.json:
        print(json.dumps(vars(res), indent=1, sort_keys=True), flush=True)
    else:
        for p in res.problems:
            print(f"PROBLEM: {shown(p)}", flush=True)
        read = f", {res.read} read and authenticated" if args.read_data else \
            " (add --read-data to read them)"
        info(f"catalog serial {catalog.serial}: {res.images} image(s), {res.versions} "
             f"version(s), {res.chunks} chunk(s) indexed{read}; {res.devices} device(s)")
    if res.problems:
        raise CheckFailed(f"check found {len(res.problems)} problem(s)")
    info("no problems found")


async def cmd_unpublish(args: argparse.Namespace, remote: RemoteStore) -> None:
    refuse_host(args.image)
    k, _cfg, catalog = await session.open_repo(args, remote)
    listed = [v.version for v in catalog.images.get(args.image, ())]
    if not listed:
        raise UsageError(f"no image {args.image!r} in the catalog (serial {catalog.serial})")
    if args.command == "forget":
        if args.keep_last < 1:
            raise UsageError("--keep-last: at least 1 (`unpublish IMAGE` removes them all)")
        drop: set[int] | None = set(sorted(listed)[:-args.keep_last])
    else:
        unknown = set(args.versions) - set(listed)
        if unknown:
            raise UsageError(f"image {args.image} has no version(s) "
                             f"{', '.join(map(str, sorted(unknown)))} (listed: "
                             f"{', '.join(map(str, listed))})")
        drop = set(args.versions) or None
    gone = sorted(listed) if drop is None else sorted(drop)
    if not gone:
        info(f"{args.image}: nothing to forget (versions {', '.join(map(str, listed))})")
        return
    new = await unpublish(remote, k, catalog, args.image, drop, int(time.time()),
                          dry_run=args.dry_run)
    verb = "dry run: would take" if args.dry_run else "took"
    info(f"{verb} {args.image} version(s) {', '.join(map(str, gone))} out of the catalog"
         + ("" if args.dry_run else f" (serial {new.serial}); `vmclient-admin prune "
            f"{args.image}` deletes their data"))


def refuse_host(name: str) -> None:
    """The bundles' chunk tree is listed in the catalog's host section, not as an image:
    image maintenance would take every bundle for unlisted data."""
    if name == HOST_IMAGE:
        raise UsageError(f"{HOST_IMAGE!r} holds the host update bundles, not an image: "
                         "image maintenance does not apply to it")


async def cmd_prune(args: argparse.Namespace, remote: RemoteStore) -> None:
    refuse_host(args.image)
    k, _cfg, catalog = await session.open_repo(args, remote)
    stale, result = await prune(remote, k, catalog, args.image, dry_run=args.dry_run)
    listed = catalog.images.get(args.image, ())
    if args.dry_run:
        what = "the whole image" if not listed else \
            f"manifest(s) of version(s) {', '.join(map(str, stale)) or '-'} and the packs " \
            "only they need"
        info(f"dry run: would delete {what} of {args.image}")
        return
    if result is None:
        info(f"{args.image}: no version listed: its data and keys deleted")
        return
    info(f"{args.image}: deleted manifest(s) of version(s) {', '.join(map(str, stale)) or '-'}"
         f", {result.deleted_packs} pack(s); {result.repacked_packs} repacked; kept "
         f"version(s) {', '.join(map(str, result.kept))}")
