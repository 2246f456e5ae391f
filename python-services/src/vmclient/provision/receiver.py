"""The Receiver: a business image from the repository into an encrypted local disk.

Order of work (repository-format.md §9, "Reading rules"):

1. ``config`` and ``catalog``, signed by the pinned admin key; the catalog's
   serial not below the last one accepted here (persisted in ``catalog.json``).
2. The image's content key, wrapped for this device and signed by the admin;
   the version's manifest, pinned by digest in the catalog, opened with it.
3. Download the chunks the local cache lacks, kept sealed: every blob is
   authenticated (AEAD, its chunk id bound in) before it is kept.  Transport
   failures are retried a few times; after that the install fails and a later
   one resumes from the cache.
4. Assemble the system disk: a new LUKS qcow2 under a temporary name
   (``.partial-*``), every chunk opened from the cache (AEAD, decompressed to
   its length, its HMAC checked against its id) and written through QEMU,
   flushed, fsync'ed, then renamed to its final name.  A chunk is checked in
   full once, where it is used, not also when it arrives.

Nothing verified from the datacenter is named ``untrusted_*`` here: the store
layer validates before it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import VMClientError
from ..host.files import commit
from ..host.keys import DeviceKeys, read_admin_key
from ..host.lease import device_account
from ..store import crypto, layout
from ..store.chunkstore import ChunkStore
from ..store.documents import Catalog, ImageVersion
from ..store.errors import ObjectNotFound, RemoteIntegrityError, StoreError
from ..store.objects import BASE_ID, ZERO_ID, BlobRef, ChunkMap, Manifest
from ..store.pack import open_blob
from ..store.plan import MAX_READ, DownloadPlan, plan_download
from ..store.remote import RemoteStore
from ..store.repo import get_catalog, get_config, get_image_manifest, get_wrapped_key
from . import qemuimg
from .cache import CatalogState, ChunkCache
from .config import ProvisionConfig
from .progress import Progress, ProgressFn

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRIES = 4
READS_AHEAD = 6  # ranged reads (up to 8 MiB each) in flight or waiting to be opened
MAX_RUN = 8 << 20  # one qemu-io write


class ImageNotFound(VMClientError):
    """The catalog has no image {!r}{}"""


class NotEntitled(VMClientError):
    """This device holds no key for image {!r} (its wrapping key id is {}): IT has to assign the image to it"""  # noqa: E501


class DownloadInterrupted(VMClientError):
    """Downloading image {!r} was interrupted ({}); {} of its chunks are kept and the next install resumes there"""  # noqa: E501

    exit_code = 75  # EX_TEMPFAIL


@dataclass(frozen=True)
class Resolved:
    image: str
    version: ImageVersion
    manifest: Manifest
    keys: crypto.KeySet
    disk: ChunkMap


class Receiver:
    def __init__(self, remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: DeviceKeys,
                 state_dir: Path, *, retry_delay: float = 0.5, max_read: int = MAX_READ) -> None:
        self.remote, self.admin, self.device = remote, admin, device
        self.state_dir = state_dir
        self.catalog_state = CatalogState(state_dir)
        self.retry_delay, self.max_read = retry_delay, max_read

    @property
    def _signers(self) -> dict[str, crypto.Ed25519PublicKey]:
        return {crypto.key_id(self.admin): self.admin}

    async def catalog(self) -> Catalog:
        """The verified catalog; its serial becomes the new floor."""
        cfg = await get_config(self.remote, self.admin)
        serial, digest = self.catalog_state.load()
        catalog, new_digest = await get_catalog(self.remote, self.admin, cfg.repository,
                                                known_serial=serial, known_digest=digest)
        if catalog.serial > serial:
            self.catalog_state.save(catalog.serial, new_digest)
        return catalog

    async def resolve(self, image: str, version: int = 0) -> Resolved:
        catalog = await self.catalog()
        found = catalog.find(image, version or None)
        if found is None:
            raise ImageNotFound(image, f" version {version}" if version else "")
        try:
            keys = await get_wrapped_key(self.remote,
                                         layout.image_key(image, self.device.wrapping_id()),
                                         self._signers, f"image:{image}", self.device.wrapping())
        except ObjectNotFound:
            raise NotEntitled(image, self.device.wrapping_id()) from None
        path = layout.image_manifest(image, found.version)
        if keys.check != found.key_check:
            raise RemoteIntegrityError("wrapped-key", f"image:{image}", path,
                                       "content key does not match the catalog's key check")
        manifest = await get_image_manifest(self.remote, keys, image, found.version,
                                            found.manifest)
        systems = [d for d in manifest.disks if d.role == "system"]
        if len(systems) != 1 or systems[0].size != found.size:
            raise RemoteIntegrityError("manifest", manifest.object_id, path,
                                       "needs one system disk of the size the catalog states")
        if BASE_ID in systems[0].ids:
            raise RemoteIntegrityError("manifest", manifest.object_id, path,
                                       "an image cannot refer to a base image")
        return Resolved(image, found, manifest, keys, systems[0])

    async def download(self, r: Resolved, progress: Progress, report: ProgressFn) -> int:
        """Fetch the chunks the cache lacks, resuming after transport failures."""
        cache = ChunkCache(self.state_dir, r.image)
        store = ChunkStore(self.remote, layout.image_store(r.image), r.keys)
        index = await self._retrying(r.image, cache, store.load_index)
        plan = plan_download(r.manifest, cache.ids(), index, store_path=store.root,
                             max_read=self.max_read)
        progress.begin("download", plan.download_bytes)
        report(progress)
        try:
            await self._fetch_all(r, cache, store, index, plan, progress, report)
        finally:
            cache.close()
        return progress.done

    async def _fetch_all(self, r: Resolved, cache: ChunkCache, store: ChunkStore,
                         index: Mapping[bytes, BlobRef], plan: DownloadPlan,
                         progress: Progress, report: ProgressFn) -> None:
        for attempt in range(RETRIES + 1):
            if attempt:
                plan = plan_download(r.manifest, cache.ids(), index, store_path=store.root,
                                     max_read=self.max_read)
            try:  # each ranged read's blobs, authenticated and kept (opened when assembled)
                # (aclosing: whatever ends the loop, no worker appends to the cache after it)
                async with contextlib.aclosing(store.fetch_sealed(
                        plan, concurrency=READS_AHEAD, keep=cache.keep)) as ranges:
                    async for blobs in ranges:
                        progress.done += sum(ref.length for _cid, ref, _sealed in blobs)
                        report(progress)
                report(progress)
                break
            except RemoteIntegrityError:
                raise
            except (OSError, StoreError, EOFError) as exc:
                if attempt == RETRIES:
                    cache.sync()
                    raise DownloadInterrupted(r.image, exc, len(cache.ids())) from exc
                log.warning("download of %s interrupted (%s); resuming (attempt %d)",
                            r.image, exc, attempt + 2)
                await asyncio.sleep(self.retry_delay * 2 ** attempt)
        cache.sync()

    async def _retrying(self, image: str, cache: ChunkCache,
                        fn: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(RETRIES + 1):
            try:
                return await fn()
            except RemoteIntegrityError:
                raise
            except (OSError, StoreError, EOFError) as exc:
                if attempt == RETRIES:
                    raise DownloadInterrupted(image, exc, len(cache.ids())) from exc
                await asyncio.sleep(self.retry_delay * 2 ** attempt)
        raise AssertionError("unreachable")

    async def assemble(self, r: Resolved, target: Path, passphrase: bytes, size: int,
                       staging: Path, staging_bytes: int, progress: Progress,
                       report: ProgressFn) -> None:
        """Write the system disk to ``target`` via a temporary name; whole or absent."""
        cache = ChunkCache(self.state_dir, r.image)
        try:
            await write_disk(cache, r.disk, r.keys, target, passphrase, size, staging,
                             staging_bytes, progress, report)
        finally:
            cache.close()


def open_datacenter(cfg: ProvisionConfig, device: DeviceKeys
                    ) -> tuple[RemoteStore, Receiver | None]:
    """The repository (nothing is contacted yet; an ``sftp://host/`` location logs in as
    this device's own account once enrolled) and the Receiver over it: none without an
    admin key, so no business VM can be installed."""
    admin = read_admin_key(cfg.repository.admin_key)
    remote = cfg.repository.open(account=device_account(cfg.manage_dir,
                                                        str(cfg.repository.location)))
    return remote, (None if admin is None else Receiver(remote, admin, device, cfg.state_dir))


async def write_disk(cache: ChunkCache, disk: ChunkMap, keys: crypto.KeySet, target: Path,
                     passphrase: bytes, size: int, staging: Path, staging_bytes: int,
                     progress: Progress, report: ProgressFn, *, blank: bool = False) -> None:
    """A new LUKS qcow2 ``target`` (at least ``size`` bytes) holding ``disk`` from the cache.

    Written under a temporary name (``.partial-*``), every chunk reopened from
    the cache, flushed, fsync'ed, then renamed: whole or absent.  With ``blank`` that
    file was made already (:func:`blank_partial`, several disks at once).
    """
    tmp = partial(target)
    progress.begin("assemble", disk.size)
    try:
        if not blank:
            await blank_partial(target, max(size, disk.size), passphrase)
        runs = _runs(disk, keys, cache)

        def take() -> list[tuple[int, bytes]]:
            """The next runs, up to ``staging_bytes`` (reading + reopening: a thread)."""
            batch, held = [], 0
            for offset, data in runs:
                batch.append((offset, data))
                held += len(data)
                if held >= staging_bytes:
                    break
            return batch

        while batch := await asyncio.to_thread(take):
            await qemuimg.write_runs(tmp, passphrase, batch, staging)
            progress.done = batch[-1][0] + len(batch[-1][1])
            report(progress)
        await asyncio.to_thread(commit, tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    progress.done = disk.size
    report(progress)


def partial(target: Path) -> Path:
    """The temporary name :func:`write_disk` writes ``target`` under."""
    return target.with_name(f".partial-{target.name}")


async def blank_partial(target: Path, size: int, passphrase: bytes) -> None:
    """A blank LUKS qcow2 of ``size`` bytes under ``target``'s temporary name (one made
    before is replaced), for :func:`write_disk` to fill."""
    tmp = partial(target)
    await asyncio.to_thread(tmp.unlink, missing_ok=True)
    await qemuimg.create(tmp, size, passphrase)


def _runs(disk: ChunkMap, keys: crypto.KeySet, cache: ChunkCache
          ) -> Iterator[tuple[int, bytes]]:
    """Contiguous (offset, plaintext) runs of non-zero chunks, each opened and checked
    against its id (:func:`~vmclient.store.pack.open_blob`)."""
    cs = disk.chunk_size
    run_start, size = -1, 0
    parts: list[bytes] = []
    for i, cid in enumerate(disk.ids):
        if cid == ZERO_ID:
            if parts:
                yield run_start, b"".join(parts)
                parts, size = [], 0
            continue
        entry = cache.get(cid)
        path = str(cache.dir)
        if entry is None:
            raise RemoteIntegrityError("chunk", cid.hex(), path, "missing from the local cache")
        plain_length, sealed = entry
        try:
            data = open_blob(keys, cid, BlobRef("cache", 0, len(sealed), plain_length), sealed,
                             path)
        except RemoteIntegrityError:
            cache.drop(cid)  # a torn (or bad) entry: the next install fetches it again
            raise
        if not parts:
            run_start = i * cs
        parts.append(data)
        size += len(data)
        if size >= MAX_RUN:
            yield run_start, b"".join(parts)
            parts, size = [], 0
    if parts:
        yield run_start, b"".join(parts)
