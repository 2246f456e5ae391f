"""A chunk store: packs and their indexes under one root, sealed with one key set.

Uploads write packs first, then the index naming them (repository-format.md
§8.1); reads merge every index, find by header the packs a crashed upload left
unindexed, and open every chunk under its id (:mod:`.pack`; the downloads are
:mod:`.fetch`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import buffers, crypto, layout, pipeline
from .chunker import Chunk
from .errors import RemoteIntegrityError, UnsupportedVersion
from .fetch import ChunkFetcher
from .format import HEX_ID_RE
from .objects import BlobRef, Index
from .pack import (
    DEFAULT_PACK_TARGET,
    TRAILER,
    PackBuilder,
    header_length,
    open_header,
    pack_size,
)
from .remote import MAX_OBJECT, RemoteStore
from .repo import get_sealed, put_sealed

log = logging.getLogger(__name__)


def _object_name(untrusted_path: str, obj_type: str) -> str:
    """The name of a listed index or pack: 64 hex digits, or the listing is not ours."""
    name = untrusted_path.rsplit("/", 1)[-1]
    if not HEX_ID_RE.fullmatch(name):
        raise RemoteIntegrityError(obj_type, name, untrusted_path, "unexpected object name")
    return name


@dataclass
class UploadResult:
    packs: int = 0
    chunks: int = 0
    bytes: int = 0
    index: str = ""


class ChunkStore(ChunkFetcher):
    """Packs + indexes under ``root``, sealed with one key set (an image's or a VM's)."""

    def __init__(self, remote: RemoteStore, root: str, keys: crypto.KeySet, *,
                 pack_target: int = DEFAULT_PACK_TARGET, level: int | None = 1,
                 uploads: int = 4) -> None:
        self.remote, self.root, self.keys = remote, root, keys
        self.pack_target, self.level = pack_target, level
        self.uploads = uploads  # packs uploaded at once (SFTPStore: one per connection)
        # packs found by header in load_index: the next upload's index adopts them
        self.unindexed: dict[str, tuple[tuple[bytes, int, int, int], ...]] = {}
        self.damaged: dict[str, str] = {}  # packs load_index found damaged: name -> problem

    async def load_index(self, *, repair: bool = False) -> dict[bytes, BlobRef]:
        """Merge every index; packs no index lists (a crashed upload) are read by header.

        A pack whose size is not the one its index implies (or that is absent) lost
        data (a server crash: §8.1 on what SFTP cannot make durable): a chunk
        another index places elsewhere is taken from there; with ``repair`` (a
        writer) its other chunks are left out, so the upload stores them again,
        else (a reader) they are read from it and refused there, naming the pack.
        A pack no index lists whose header cannot be read (truncated by a crash)
        is skipped, and with ``repair`` (the caller holds the store's lock)
        deleted: nothing refers to it.  With ``repair``, an index that does not
        open (cut short by a crash, or altered) is deleted too: its packs' headers
        hold the same records, so they are read by header and the next index
        names them again.  All are recorded in :attr:`damaged` (pack name, or
        ``"index <name>"`` → problem).
        """
        self.damaged = {}
        indexes: list[Index] = []
        for entry in await self.remote.list(f"{self.root}/index"):
            name = _object_name(entry.path, "index")
            try:
                body = await get_sealed(self.remote, entry.path, self.keys.enc, "index", name)
                indexes.append(Index.parse(body, name, entry.path))
            except UnsupportedVersion:
                raise  # a newer writer's: never touched
            except RemoteIntegrityError as exc:
                if not repair:
                    raise
                # (a crash cut it short, or it was altered): the packs it named carry the
                # same records in their headers, so they are found below and re-indexed
                self.damaged[f"index {name}"] = exc.problem
                await self.remote.delete(entry.path)
        # listed after the indexes: a pack precedes the index naming it (§8.1), so every
        # pack an index read above names is in this listing unless it was lost
        sizes = {_object_name(e.path, "pack"): e.size
                 for e in await self.remote.list(f"{self.root}/packs")}
        out: dict[bytes, BlobRef] = {}
        indexed: set[str] = set()
        for idx in indexes:
            indexed.update(idx.packs)
            for pack, recs in idx.packs.items():
                need = pack_size(recs)
                if sizes.get(pack) != need:
                    self.damaged[pack] = (f"{sizes[pack]} bytes, but index {idx.name} says "
                                          f"{need}" if pack in sizes else
                                          f"missing, but index {idx.name} names it")
        for idx in indexes:
            for cid, ref in idx.refs():
                if ref.pack not in self.damaged:
                    out[cid] = ref
        if not repair and self.damaged:  # a reader: a chunk with no other copy is read
            for idx in indexes:  # there (and refused, naming the pack); a writer stores
                # such chunks again
                for cid, ref in idx.refs():
                    out.setdefault(cid, ref)
        for name, size in sizes.items():
            if name in indexed:
                continue
            try:
                self.unindexed[name] = await self.read_header(name, size)
            except RemoteIntegrityError as exc:
                self.damaged[name] = f"no index names it and {exc.problem}"
                if repair:
                    await self.remote.delete(layout.pack(self.root, name))
                continue
            for cid, off, length, plain in self.unindexed[name]:
                out.setdefault(cid, BlobRef(name, off, length, plain))
        for name, problem in self.damaged.items():
            log.warning("%s: %s is damaged (%s)%s", self.root,
                        name if name.startswith("index ") else f"pack {name}", problem,
                        "; deleted" if repair and name not in indexed else
                        "; its chunks are not reused")
        return out

    async def read_header(self, name: str, size: int) -> tuple[tuple[bytes, int, int, int], ...]:
        path = layout.pack(self.root, name)
        if size < TRAILER.size:
            raise RemoteIntegrityError("pack-header", name, path, "pack truncated")
        trailer = await self.remote.get(path, size - TRAILER.size, TRAILER.size)
        length = header_length(trailer, name, path, size)
        if length > MAX_OBJECT["pack-header"]:
            raise RemoteIntegrityError("pack-header", name, path,
                                       f"header of {length} bytes: more than the "
                                       f"{MAX_OBJECT['pack-header']} a pack header may have")
        header = await self.remote.get(path, size - TRAILER.size - length, length)
        return open_header(self.keys, name, header, path, size)

    async def upload(self, chunks: Iterable[Chunk], known: Mapping[bytes, BlobRef]
                     ) -> UploadResult:
        """Write the chunks ``known`` lacks in packs, then one index naming those packs.

        The index also names packs an interrupted upload left without one (found
        by :meth:`load_index`), so they are read by header only once.

        Pipelined (:mod:`.pipeline`): ``chunks`` is iterated in a reader thread,
        batches are compressed and sealed in worker threads, packs are filled in
        chunk order and up to ``self.uploads`` of them are uploaded at once.  The
        index is written only after every pack arrived; if anything fails, the
        packs already being uploaded are finished first (the next upload finds
        them by header and does not send them again), then the error is raised.
        """
        with buffers.steady():
            return await self._upload(chunks, known)

    async def _upload(self, chunks: Iterable[Chunk], known: Mapping[bytes, BlobRef]
                      ) -> UploadResult:
        result = UploadResult()
        written: dict[str, tuple[tuple[bytes, int, int, int], ...]] = dict(self.unindexed)
        uploads: set[asyncio.Task[None]] = set()
        builder = self._builder()
        source = pipeline.NewChunks(iter(chunks), known)
        n = pipeline.workers()
        pool, reader = pipeline.executor(n, "vmclient-seal"), pipeline.executor(1, "vmclient-read")

        started: list[asyncio.Task[None]] = []  # all, so every failure is retrieved below

        async def wait_uploads(limit: int) -> None:
            while len(uploads) > limit:
                done, _ = await asyncio.wait(uploads, return_when=asyncio.FIRST_COMPLETED)
                uploads.difference_update(done)
                for t in done:
                    t.result()

        async def flush(b: PackBuilder) -> None:
            await wait_uploads(max(1, self.uploads) - 1)
            started.append(asyncio.create_task(self._flush(b, written, result)))
            uploads.add(started[-1])

        try:
            # aclosing: a failed upload stops the reader at once, not when the GC gets to it
            async with contextlib.aclosing(pipeline.sealed_batches(
                    source, self.keys, self.level, pool, reader, depth=2 * n)) as batches:
                async for batch in batches:
                    for cid, blob, plain_length in batch:
                        builder.add_sealed(cid, blob, plain_length)
                        if builder.full:
                            await flush(builder)
                            builder = self._builder()
            if len(builder):
                await flush(builder)
            await wait_uploads(0)
        finally:
            await asyncio.gather(*started, return_exceptions=True)
            pool.shutdown(wait=False)
            reader.shutdown(wait=False)
        if written:
            result.index = secrets.token_hex(32)
            await put_sealed(self.remote, layout.index(self.root, result.index), self.keys.enc,
                             ("index", result.index), Index(result.index, written).to_bytes())
            self.unindexed.clear()
        return result

    def _builder(self) -> PackBuilder:
        return PackBuilder(self.keys, self.pack_target, self.level)

    async def _flush(self, builder: PackBuilder, written: dict[str, tuple[tuple[bytes, int, int,
                     int], ...]], result: UploadResult) -> None:
        data, records = builder.finish()
        await self.remote.put_atomic(layout.pack(self.root, builder.name), data, exclusive=True)
        written[builder.name] = records
        result.packs += 1
        result.chunks += len(records)
        result.bytes += len(data)
