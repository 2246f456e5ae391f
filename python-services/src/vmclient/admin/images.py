"""Publishing an image version, and reading one back (verified) into a raw file.

Publishing (repository-format.md §8, write ordering): the image's lock, the
content key (one per image, wrapped for the escrow key so the next version
reuses it and chunk ids agree across versions), packs + one index, the stored
chunks the version reuses read back (damaged ones uploaded again, their packs
replaced: :mod:`..store.repair`), the sealed manifest, then the catalog
re-signed with the next serial.  A qcow2 (or any
format qemu-img reads) is first converted with ``qemu-img convert -O raw`` to
a sparse temporary file; a raw image is read as it is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..host.files import commit
from ..store import crypto, layout
from ..store.chunker import Chunk, Chunker, chunk_count
from ..store.chunkstore import ChunkStore, UploadResult
from ..store.documents import Catalog, ImageVersion, RepoConfig, WrappedKey
from ..store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from ..store.format import NAME_RE
from ..store.holding import holding, sweep_locked
from ..store.objects import ZERO_ID, BlobRef, ChunkMap, Manifest
from ..store.plan import DownloadPlan, plan_download
from ..store.remote import RemoteStore
from ..store.repair import check_blobs, replace_packs
from ..store.repo import (
    get_catalog,
    get_image_manifest,
    get_wrapped_key,
    put_catalog,
    put_image_manifest,
    put_wrapped_key,
)
from .text import human_size

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # called with the number of bytes just processed
SECTOR = 512


@dataclass(frozen=True)
class Published:
    name: str
    version: int
    size: int
    serial: int
    upload: UploadResult
    damaged: int = 0  # stored chunks found damaged and uploaded again


def image_info(path: Path) -> tuple[str, int]:
    """(format, virtual size) as ``qemu-img info`` reports them."""
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                             capture_output=True, text=True).stdout
    except FileNotFoundError as exc:
        raise UsageError("qemu-img is not installed") from exc
    except subprocess.CalledProcessError as exc:
        raise UsageError(f"{path}: not an image qemu-img can read: {exc.stderr.strip()}") from exc
    info = json.loads(out)
    return str(info["format"]), int(info["virtual-size"])


def check_image(path: Path) -> tuple[str, int]:
    """(format, virtual size) of a disk image; refused if it is none (before any write)."""
    fmt, size = image_info(path)
    length = path.stat().st_size  # qemu-img rounds a raw file's size up to a sector
    if fmt == "raw" and (length == 0 or length % SECTOR):
        raise UsageError(f"{path}: not a disk image: qemu-img knows no image format in it, and "
                         f"as raw bytes its {length} bytes are not whole {SECTOR}-byte sectors")
    return fmt, size


@contextmanager
def raw_view(path: Path, tmpdir: str | None = None, *,
             on_convert: Callable[[int, int], None] | None = None
             ) -> Iterator[tuple[Path, int]]:
    """A raw file with the guest-visible bytes of ``path`` (converted if not raw;
    ``on_convert(done, size)`` follows qemu-img's progress)."""
    fmt, size = check_image(path)
    if fmt == "raw":
        yield path, size
        return
    work = Path(tempfile.mkdtemp(prefix="vmclient-publish-", dir=tmpdir))
    try:
        warn_if_small(work, path, size)
        raw = work / "disk.raw"
        convert(path, raw, size, on_convert)
        yield raw, size
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def as_is(path: Path) -> Iterator[tuple[Path, int]]:
    """A file published byte for byte (a host update bundle)."""
    yield path, path.stat().st_size


_PERCENT_RE = re.compile(rb"\(([0-9]{1,3}(?:\.[0-9]+)?)/100%\)")


def convert(path: Path, raw: Path, size: int,
            on_convert: Callable[[int, int], None] | None) -> None:
    """``qemu-img convert -p -O raw`` (sparse), its ``(NN.NN/100%)`` progress followed."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["qemu-img", "convert", "-p", "-O", "raw", "-S", "64k",
                                 str(path), str(raw)], stdout=subprocess.PIPE, stderr=err)
        try:
            assert proc.stdout is not None
            while chunk := os.read(proc.stdout.fileno(), 4096):
                found = _PERCENT_RE.findall(chunk)
                if found and on_convert is not None:
                    on_convert(min(size, int(float(found[-1]) * size / 100)), size)
            proc.wait()
        finally:
            if proc.poll() is None:  # Ctrl-C: the conversion goes with us
                proc.kill()
                proc.wait()
        if proc.returncode:
            err.seek(0)
            raise UsageError(f"qemu-img convert {path} failed: "
                             f"{err.read().decode(errors='replace').strip()}")


def warn_if_small(work: Path, image: Path, size: int) -> None:
    """Warn when the temporary directory may not hold the converted (sparse) raw image:
    it needs about the image's allocated data, at most its virtual size."""
    free = shutil.disk_usage(work).free
    allocated = image_allocated(image) or size
    if free < allocated:
        warn(f"{work.parent} has {human_size(free)} free; converting {image} to raw there "
             f"needs about {human_size(allocated)} (up to {human_size(size)}): it will likely "
             "fail; give --tmpdir on a larger file system")
    elif free < size:
        warn(f"{work.parent} has {human_size(free)} free, less than the {human_size(size)} "
             f"virtual size of {image}: enough only if the disk is mostly empty (the raw copy "
             "is sparse); --tmpdir names another")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def image_allocated(path: Path) -> int:
    """Bytes the image's data take (``qemu-img info`` actual-size), 0 if unknown."""
    try:
        out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                             capture_output=True, text=True).stdout
        return int(json.loads(out).get("actual-size", 0))
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def read_chunks(raw: Path, size: int, chunker: Chunker, ids: list[bytes],
                progress: Progress | None = None) -> Iterator[Chunk]:
    """Chunks of the raw file in order; their ids are appended to ``ids``."""
    cs = chunker.chunk_size
    with raw.open("rb") as f:
        for index in range(chunk_count(size, cs)):
            data = f.read(min(cs, size - index * cs))
            if not data:
                raise LocalSyncError(f"{raw} ends before its {size} bytes")
            chunk = chunker.chunk(index, data)
            ids.append(chunk.id)
            if progress is not None:
                progress(len(data))
            yield chunk


async def content_key(remote: RemoteStore, name: str, admin: crypto.Ed25519PrivateKey,
                      escrow: crypto.X25519PrivateKey, *, create: bool) -> crypto.KeySet:
    """The image's content key: unwrapped from its escrow copy, or (``create``: the image
    has no published version yet) new and escrowed.  A missing escrow copy of an image
    that has versions is refused: a new key could read none of them."""
    escrow_id = crypto.key_id(escrow.public_key())
    path = layout.image_key(name, escrow_id)
    admin_pub = admin.public_key()
    try:
        return await get_wrapped_key(remote, path, {crypto.key_id(admin_pub): admin_pub},
                                     f"image:{name}", escrow)
    except ObjectNotFound:
        if not create:
            raise RemoteIntegrityError(
                "wrapped-key", f"image:{name}", path,
                "the escrow copy of the image's content key is missing, but the catalog "
                "lists versions of the image: refusing to make a new key (the published "
                "versions could no longer be read, assigned or extended); restore this file "
                "from a backup of the repository") from None
    keys = crypto.KeySet.generate()
    await put_wrapped_key(remote, path, admin,
                          WrappedKey.create(f"image:{name}", escrow.public_key(), keys))
    return keys


async def publish(remote: RemoteStore, cfg: RepoConfig, catalog: Catalog, name: str,
                  image: Path, admin: crypto.Ed25519PrivateKey,
                  escrow: crypto.X25519PrivateKey, *, now: int | None = None,
                  tmpdir: str | None = None, progress: Progress | None = None,
                  on_size: Callable[[int], None] | None = None,
                  on_convert: Callable[[int, int], None] | None = None,
                  latest_of: Callable[[Catalog], ImageVersion | None] | None = None,
                  register: Callable[[Catalog, ImageVersion, int], Catalog] | None = None,
                  raw: bool = False) -> tuple[Published, Catalog]:
    """Publish ``image`` as the next version of ``name`` (repository-format.md §8.2).

    Under the image's lock, kept fresh and released even on Ctrl-C: the catalog
    is read again (``catalog`` is the one seen before; a newer one may list a
    version published meanwhile), what an interrupted publish left is cleared
    (temporary files; manifests of versions the catalog does not list: rolled
    back; its packs are found and reused), then the version is published.

    ``latest_of`` and ``register`` (a host update bundle, :mod:`.hostupdates`) find the
    newest version and enter the new one into the next catalog instead of
    ``catalog.images[name]``; ``raw``: the file's bytes as they are, whatever their
    length (a bundle), not a disk image.
    """
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"image name {name!r} must match {NAME_RE.pattern}")
    now = int(time.time()) if now is None else now
    token = await remote.lock(layout.image_lock(name), f"vmclient-admin publish {name}")
    async with holding(remote, token):
        catalog, _digest = await get_catalog(remote, admin.public_key(), catalog.repository,
                                             known_serial=catalog.serial)
        latest = catalog.find(name) if latest_of is None else latest_of(catalog)
        version = 1 if latest is None else latest.version + 1
        await sweep_locked(remote, layout.image_store(name), f"{layout.image_dir(name)}/versions")
        await roll_back_unlisted(remote, name, version)
        keys = await content_key(remote, name, admin, escrow, create=latest is None)
        store = ChunkStore(remote, layout.image_store(name), keys)
        known = await store.load_index(repair=True)
        ids: list[bytes] = []
        view = as_is(image) if raw else raw_view(image, tmpdir, on_convert=on_convert)
        with view as (path, size):
            if on_size is not None:
                on_size(size)
            chunker = Chunker(keys.chunk_id, cfg.chunk_size)
            result = await store.upload(read_chunks(path, size, chunker, ids, progress), known)
            damaged = await _replace_damaged(store, known, ids, path, chunker)
        disk = ChunkMap("system", "system", size, cfg.chunk_size, tuple(ids))
        manifest = Manifest("image", name, str(version), version, now, keys.check, (disk,))
        digest = await put_image_manifest(remote, keys, manifest)
        entry = ImageVersion(version, digest, size, now, keys.check)
        if register is not None:
            new = register(catalog, entry, now)
        else:
            images = dict(catalog.images)
            images[name] = (*images.get(name, ()), entry)
            new = Catalog(catalog.repository, catalog.serial + 1, now, images, catalog.host)
        await put_catalog(remote, admin, new)
    return Published(name, version, size, new.serial, result, damaged), new


async def _replace_damaged(store: ChunkStore, known: dict[bytes, BlobRef], ids: list[bytes],
                           raw: Path, chunker: Chunker) -> int:
    """Read back the stored chunks this version reuses; a pack holding one that does not
    open is replaced (:func:`replace_packs`: its good blobs copied, the damaged ones
    uploaded again from ``raw``).  How many damaged chunks were found."""
    reused = {cid: known[cid] for cid in set(ids) if cid in known}
    _good, bad = await check_blobs(store, reused)
    if not bad:
        return 0
    packs = {reused[cid].pack for cid in bad}
    log.warning("image store %s: %d stored chunk(s) this version reuses are damaged (%s); "
                "uploading them again and replacing pack(s) %s", store.root, len(bad),
                next(iter(bad.values())), ", ".join(sorted(packs)))
    cs = chunker.chunk_size
    fresh = []
    with raw.open("rb") as f:
        for index, cid in enumerate(ids):
            if cid in bad:
                fresh.append(chunker.chunk(index, os.pread(f.fileno(), cs, index * cs)))
                bad.pop(cid)
    await replace_packs(store, packs, known, fresh)
    return len(fresh)


async def roll_back_unlisted(remote: RemoteStore, name: str, first: int) -> list[int]:
    """Delete the manifests of versions ``first`` and later: the catalog does not list
    them (a publish interrupted between manifest and catalog), so nothing refers to
    them, and the next version must be free to take their number."""
    gone = []
    for e in await remote.list(f"{layout.image_dir(name)}/versions"):
        parts = e.path.split("/")
        if len(parts) == 5 and parts[3].isdigit() and int(parts[3]) >= first \
                and e.path == layout.image_manifest(name, int(parts[3])):
            await remote.delete(e.path)
            gone.append(int(parts[3]))
    if gone:
        log.warning("image %s: rolled back version(s) %s an interrupted publish left unlisted",
                    name, ", ".join(map(str, sorted(gone))))
    return gone


@dataclass
class Fetched:
    plan: DownloadPlan
    chunks: int = 0
    bytes: int = 0  # plaintext written


async def fetch_image(remote: RemoteStore, keys: crypto.KeySet, name: str,
                      entry: ImageVersion, out: Path, *,
                      local: dict[bytes, bytes] | None = None, concurrency: int = 4,
                      progress: Progress | None = None) -> tuple[Manifest, Fetched]:
    """Download one image version into the raw file ``out``, every chunk verified.

    ``local`` holds chunks already present (id → plaintext): only the others are
    read.  The file is written under a temporary name and renamed when whole, so
    an interrupted or refused download never leaves a file that looks complete.
    """
    m = await get_image_manifest(remote, keys, name, entry.version, entry.manifest)
    (disk,) = [d for d in m.disks if d.role == "system"]
    store = ChunkStore(remote, layout.image_store(name), keys)
    have = local or {}
    plan = plan_download(m, set(have), await store.load_index(), store_path=store.root)
    positions: dict[bytes, list[int]] = {}
    for i, cid in enumerate(disk.ids):
        if cid != ZERO_ID:
            positions.setdefault(cid, []).append(i * disk.chunk_size)
    tmp = out.with_name(f".{out.name}.partial")
    fetched = Fetched(plan)
    try:
        with tmp.open("wb") as f:
            f.truncate(disk.size)
            fd = f.fileno()
            for cid, data in have.items():
                for off in positions.get(cid, ()):
                    os.pwrite(fd, data, off)
            async for cid, data in store.fetch(plan, concurrency=concurrency):
                for off in positions.get(cid, ()):
                    os.pwrite(fd, data, off)
                fetched.chunks += 1
                fetched.bytes += len(data)
                if progress is not None:
                    progress(len(data))
        commit(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return m, fetched


async def read_published(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                         recipient: crypto.X25519PrivateKey, name: str, out: Path, *,
                         version: int | None = None, local: dict[bytes, bytes] | None = None,
                         concurrency: int = 4, progress: Progress | None = None
                         ) -> tuple[Manifest, Fetched]:
    """Every check a laptop makes (config, catalog, wrapped key, manifest, chunks), then fetch.

    ``recipient`` is the key the content key is wrapped for: a device's X25519
    key, or the escrow key (the admin verifying what it published).
    """
    from ..store.repo import get_config
    signers = {crypto.key_id(admin): admin}
    cfg = await get_config(remote, admin)
    catalog, _digest = await get_catalog(remote, admin, cfg.repository)
    entry = catalog.find(name, version)
    if entry is None:
        raise UsageError(f"no image {name!r} version {version or 'latest'} in the catalog")
    keys = await get_wrapped_key(remote, layout.image_key(name, crypto.key_id(
        recipient.public_key())), signers, f"image:{name}", recipient)
    return await fetch_image(remote, keys, name, entry, out, local=local,
                             concurrency=concurrency, progress=progress)
