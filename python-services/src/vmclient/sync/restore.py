"""Rebuild a VM's disks from a snapshot, on this or another device.

The snapshot is read under ``devices/<source device>/vms/<vm>/`` and must be
signed by one of ``signers`` (the device itself; after a re-key, the old device
the ``rekey`` order names).  Every chunk is authenticated and its HMAC checked
(:meth:`~vmclient.store.chunkstore.ChunkStore.fetch`).

Each disk is assembled as a sparse raw file ``<dest>.partial`` and converted to
qcow2 under a temporary name (or, for ``fmt="raw"``, fsync'ed), then renamed
to ``<dest>`` only after every chunk was verified: no disk that looks complete
is ever half written.

The partial file need not be durable: resumable and deduplicated against
local data, a restore that finds a partial file reads it back and keeps every
chunk whose HMAC already equals the id the manifest wants there; a chunk
found locally is copied to every other place it belongs.  An interrupted
restore therefore continues where it stopped, and chunks repeated in the VM
are fetched once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..host.files import commit
from ..store import crypto, layout, repo
from ..store.chunkstore import ChunkStore
from ..store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from ..store.objects import BASE_ID, ZERO_ID
from ..store.plan import DownloadPlan, plan_download
from ..store.remote import RemoteStore
from . import disks
from .writeback import Writeback


@dataclass
class RestoreResult:
    vm: str
    seq: int = 0
    chunks_local: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0


async def restore_vm(remote: RemoteStore, signers: repo.Signers, keys: crypto.KeySet, *,
                     device: str, vm: str, dest: Mapping[str, Path],
                     snapshot: str | None = None, known_seq: int = 0,
                     fmt: str = "qcow2") -> RestoreResult:
    """Write every disk of the snapshot to ``dest[disk name]`` (``fmt``: qcow2 or raw).

    The memory image (role ``memory``) is written, always as the plain file it
    was, only if ``dest`` names it.
    """
    if fmt not in ("qcow2", "raw"):
        raise LocalSyncError(f"cannot restore into format {fmt!r}")
    started = time.monotonic()
    full = await repo.load_snapshot(remote, signers, keys, device, vm, snapshot, known_seq)
    result = RestoreResult(vm, full.seq)
    names = {d.name for d in full.disks}
    needed = {d.name for d in full.disks if d.role != "memory"}
    if not needed <= set(dest) or not set(dest) <= names:
        raise LocalSyncError(f"snapshot {full.label} of {vm} has disks "
                             f"{sorted(names)}, not {sorted(dest)}")
    m = dataclasses.replace(full, disks=tuple(d for d in full.disks if d.name in dest))
    if any(BASE_ID in d.ids for d in m.disks):
        raise LocalSyncError("snapshots on a base image are not restorable yet")
    where: dict[bytes, list[tuple[int, int, int]]] = {}  # id → (fd, offset, length)
    fds: dict[str, int] = {}
    resuming = False
    try:
        for d in m.disks:
            partial = dest[d.name].with_name(dest[d.name].name + ".partial")
            resuming |= partial.exists()
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o600)
            fds[d.name] = fd
            os.ftruncate(fd, d.size)
            for i, cid in enumerate(d.ids):
                if cid != ZERO_ID:
                    off = i * d.chunk_size
                    where.setdefault(cid, []).append((fd, off, min(d.chunk_size, d.size - off)))
        have = await asyncio.to_thread(_scan, keys, where) if resuming else {}
        store = ChunkStore(remote, layout.vm_store(device, vm), keys)
        index = await store.load_index()
        plan = plan_download(m, set(have), index, store_path=store.root)
        for cid in plan.local:
            _place(where[cid], have[cid], skip=have[cid])
        result.chunks_local = len(plan.local)
        # the raw partial file becomes the disk: written back while the restore goes on,
        # fsynced at the end (a qcow2 is converted from it, and the result fsynced)
        flusher = Writeback(list(fds.values()) if fmt == "raw" else [])
        try:
            await fetch_into(store, plan,
                             lambda chunks: flusher.wrote(_write(where, chunks)))
        except BaseException:
            await asyncio.to_thread(flusher.close, sync=False)
            raise
        await asyncio.to_thread(flusher.close, sync=fmt == "raw")
        result.chunks_fetched = plan.missing_local
        result.bytes_fetched = plan.download_bytes
    finally:
        for fd in fds.values():
            os.close(fd)
    for d in m.disks:
        await _finish(dest[d.name], fmt, memory=d.role == "memory")
    result.seconds = time.monotonic() - started
    return result


async def _finish(dest: Path, fmt: str, *, memory: bool) -> None:
    """The whole ``.partial`` file becomes ``dest`` (converted to qcow2 if asked), fsynced."""
    partial = dest.with_name(dest.name + ".partial")
    if fmt == "raw" or memory:  # a raw one was fsynced by the Writeback: fsync_file is cheap
        await asyncio.to_thread(commit, partial, dest)
        return
    tmp = dest.with_name(f".tmp-{dest.name}")
    await asyncio.to_thread(disks.raw_to_qcow2, partial, tmp)
    await asyncio.to_thread(commit, tmp, dest)
    partial.unlink()


async def fetch(store: ChunkStore, plan: DownloadPlan
                ) -> AsyncIterator[tuple[bytes, bytes]]:
    """:meth:`ChunkStore.fetch`; a pack the index names but the server lacks is named too."""
    try:
        async for item in store.fetch(plan):
            yield item
    except ObjectNotFound as exc:
        raise RemoteIntegrityError("pack", exc.path.rsplit("/", 1)[-1], exc.path,
                                   "listed by an index but missing (deleted or withheld)"
                                   ) from None


async def fetch_into(store: ChunkStore, plan: DownloadPlan,
                     sink: Callable[[Sequence[tuple[bytes, bytes]]], None]) -> None:
    """:meth:`ChunkStore.fetch_into` (chunks opened and written in worker threads), with a
    pack the index names but the server lacks named as in :func:`fetch`."""
    try:
        await store.fetch_into(plan, sink)
    except ObjectNotFound as exc:
        raise RemoteIntegrityError("pack", exc.path.rsplit("/", 1)[-1], exc.path,
                                   "listed by an index but missing (deleted or withheld)"
                                   ) from None


def _write(where: Mapping[bytes, list[tuple[int, int, int]]],
           chunks: Sequence[tuple[bytes, bytes]]) -> int:
    """Write fetched chunks to all their places, adjacent ones with one ``pwritev``.

    Runs in worker threads; the places of different chunks never overlap.
    Returns the bytes written.
    """
    writes = sorted((fd, off, data) for cid, data in chunks for fd, off, _n in where[cid])
    total, i = 0, 0
    while i < len(writes):
        fd, start, data = writes[i]
        bufs, end = [data], start + len(data)
        i += 1
        while (i < len(writes) and writes[i][0] == fd and writes[i][1] == end
               and len(bufs) < _IOV_MAX):
            bufs.append(writes[i][2])
            end += len(writes[i][2])
            i += 1
        _pwritev(fd, bufs, start, end - start)
        total += end - start
    return total


_IOV_MAX = 512


def _pwritev(fd: int, bufs: list[bytes], offset: int, total: int) -> None:
    done = os.pwritev(fd, bufs, offset)
    if done != total:  # short write (rare): finish it plainly
        rest = b"".join(bufs)[done:]
        while rest:
            n = os.pwrite(fd, rest, offset + total - len(rest))
            rest = rest[n:]


def _scan(keys: crypto.KeySet, where: dict[bytes, list[tuple[int, int, int]]]
          ) -> dict[bytes, bytes]:
    """Chunks the partial files already hold at one of their places: id → plaintext."""
    have: dict[bytes, bytes] = {}
    for cid, places in where.items():
        for fd, off, length in places:
            data = os.pread(fd, length, off)
            if data.count(0) != len(data) and crypto.chunk_id(keys.chunk_id, data) == cid:
                have[cid] = data
                break
    return have


def _place(places: list[tuple[int, int, int]], data: bytes, skip: bytes | None = None) -> None:
    for fd, off, _length in places:
        if skip is not None and os.pread(fd, len(data), off) == data:
            continue
        os.pwrite(fd, data, off)
