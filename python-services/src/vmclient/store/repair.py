"""Finding and replacing damaged blobs of a chunk store (a writer, under the store's lock).

:func:`check_blobs` reads blobs back and opens them (AEAD, length, chunk id): the
ones that do not open are damaged.  :func:`replace_packs` takes the packs holding
them out of the store: the blobs that still open are copied into new packs, the
caller supplies fresh copies of the damaged ones it has (the image being
published), one index names all of them; then every index naming a damaged pack
is replaced by one without it, and the pack is deleted (repository-format.md
§8.1 rule 6, and §8.2).  Damaged chunks nobody can supply are lost (they were already) and
are named in the log.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Mapping

from ..errors import VMClientError
from . import layout
from .chunker import Chunk
from .chunkstore import ChunkStore, UploadResult
from .objects import BlobRef, Index
from .pack import open_blob
from .plan import plan_reads
from .repo import get_sealed, put_sealed

log = logging.getLogger(__name__)


async def check_blobs(store: ChunkStore, refs: Mapping[bytes, BlobRef], *,
                      keep: bool = False, concurrency: int = 4
                      ) -> tuple[dict[bytes, bytes], dict[bytes, str]]:
    """Read and open every blob of ``refs``: (good: id → plaintext if ``keep`` else
    b"", damaged: id → problem).  Up to ``concurrency`` ranged reads at once."""
    good: dict[bytes, bytes] = {}
    bad: dict[bytes, str] = {}
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(read_index: int) -> None:
        read = reads[read_index]
        path = layout.pack(store.root, read.pack)
        async with gate:
            untrusted = await store.remote.get(path, read.offset, read.length)

        def open_all() -> None:
            for cid, ref in read.blobs:
                start = ref.offset - read.offset
                try:
                    data = open_blob(store.keys, cid, ref, untrusted[start:start + ref.length],
                                     path)
                    good[cid] = data if keep else b""
                except VMClientError as exc:
                    bad[cid] = str(exc)

        await asyncio.to_thread(open_all)

    reads = plan_reads(refs)
    await asyncio.gather(*(one(i) for i in range(len(reads))))
    return good, bad


async def replace_packs(store: ChunkStore, packs: set[str], known: Mapping[bytes, BlobRef],
                        fresh: Iterable[Chunk]) -> UploadResult:
    """Take ``packs`` (holding damaged blobs) out of the store, keeping what can be kept.

    ``known`` is the store's index (:meth:`ChunkStore.load_index`); ``fresh`` are
    good copies of chunks (any of them; typically the damaged ones the caller has).
    """
    members = {cid: ref for cid, ref in known.items() if ref.pack in packs}
    readable, damaged = await check_blobs(store, members, keep=True)
    supplied = {c.id: c for c in fresh}
    chunks = [supplied.get(cid) or Chunk(0, cid, data) for cid, data in readable.items()]
    chunks += [c for cid, c in supplied.items() if cid not in readable]
    lost = sorted(cid.hex() for cid in damaged if cid not in supplied)
    if lost:
        log.error("%s: %d damaged chunk(s) no copy of which exists are dropped with their "
                  "pack(s) %s: %s", store.root, len(lost), ", ".join(sorted(packs)),
                  ", ".join(lost))
    result = await store.upload(chunks, {})  # new packs and an index naming them
    for entry in await store.remote.list(f"{store.root}/index"):
        name = entry.path.rsplit("/", 1)[-1]
        if name == result.index:
            continue
        body = await get_sealed(store.remote, entry.path, store.keys.enc, "index", name)
        idx = Index.parse(body, name, entry.path)
        if not packs & set(idx.packs):
            continue
        rest = {p: recs for p, recs in idx.packs.items() if p not in packs}
        if rest:
            new = Index(secrets.token_hex(32), rest)
            await put_sealed(store.remote, layout.index(store.root, new.name), store.keys.enc,
                             ("index", new.name), new.to_bytes())
        await store.remote.delete(entry.path)
    for pack in sorted(packs):
        await store.remote.delete(layout.pack(store.root, pack))
    return result
