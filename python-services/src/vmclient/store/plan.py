"""Pure planning: what to upload, what to download, what prune may delete.

No I/O: the inputs are chunk ids and indexes, the outputs are plain data that
an engine carries out against a :class:`~vmclient.store.remote.RemoteStore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

from .errors import RemoteIntegrityError
from .objects import BASE_ID, ZERO_ID, BlobRef, Manifest

MAX_READ = 8 << 20  # one ranged read covers at most this much of a pack
MAX_GAP = 256 << 10  # read through gaps up to this size rather than issue a new request


def plan_upload(chunk_ids: Iterable[bytes], remote: Set[bytes] | Mapping[bytes, object]
                ) -> list[bytes]:
    """Ids to upload: not zero, not base, not in the remote index; each once, in order."""
    seen: set[bytes] = set()
    out = []
    for cid in chunk_ids:
        if cid in (ZERO_ID, BASE_ID) or cid in remote or cid in seen:
            continue
        seen.add(cid)
        out.append(cid)
    return out


@dataclass(frozen=True)
class ReadRange:
    """One ranged read of a pack and the blobs it covers."""

    pack: str
    offset: int
    length: int
    blobs: tuple[tuple[bytes, BlobRef], ...]


@dataclass(frozen=True)
class DownloadPlan:
    reads: tuple[ReadRange, ...]
    local: frozenset[bytes]  # needed ids already present locally
    missing_local: int  # chunks to fetch

    @property
    def download_bytes(self) -> int:
        return sum(r.length for r in self.reads)


def plan_download(manifest: Manifest, local: Set[bytes], remote: Mapping[bytes, BlobRef],
                  *, store_path: str = "", max_read: int = MAX_READ,
                  max_gap: int = MAX_GAP) -> DownloadPlan:
    """Ranged pack reads for the chunks of ``manifest`` not in ``local``.

    A chunk listed by the (authenticated) manifest but absent from every index
    is a :class:`RemoteIntegrityError`: the server lost or withheld it.
    """
    needed = manifest.stored_ids()
    fetch = needed - local
    by_pack: dict[str, list[tuple[bytes, BlobRef]]] = {}
    for cid in fetch:
        ref = remote.get(cid)
        if ref is None:
            raise RemoteIntegrityError("chunk", cid.hex(), store_path,
                                       f"listed by {manifest.object_id} but in no index")
        by_pack.setdefault(ref.pack, []).append((cid, ref))
    return DownloadPlan(_reads(by_pack, max_read, max_gap), frozenset(needed & local),
                        len(fetch))


def plan_reads(refs: Mapping[bytes, BlobRef], *, max_read: int = MAX_READ,
               max_gap: int = MAX_GAP) -> tuple[ReadRange, ...]:
    """Ranged pack reads covering every blob of ``refs`` (chunk id → where it is)."""
    by_pack: dict[str, list[tuple[bytes, BlobRef]]] = {}
    for cid, ref in refs.items():
        by_pack.setdefault(ref.pack, []).append((cid, ref))
    return _reads(by_pack, max_read, max_gap)


def _reads(by_pack: Mapping[str, list[tuple[bytes, BlobRef]]], max_read: int, max_gap: int
           ) -> tuple[ReadRange, ...]:
    reads: list[ReadRange] = []
    for pack in sorted(by_pack):
        reads.extend(_coalesce(pack, sorted(by_pack[pack], key=lambda b: b[1].offset),
                               max_read, max_gap))
    return tuple(reads)


def _coalesce(pack: str, blobs: Sequence[tuple[bytes, BlobRef]], max_read: int,
              max_gap: int) -> list[ReadRange]:
    out: list[ReadRange] = []
    group: list[tuple[bytes, BlobRef]] = []
    start = end = 0
    for cid, ref in blobs:
        if group and (ref.offset - end > max_gap or ref.offset + ref.length - start > max_read):
            out.append(ReadRange(pack, start, end - start, tuple(group)))
            group = []
        if not group:
            start = end = ref.offset
        group.append((cid, ref))
        end = max(end, ref.offset + ref.length)
    if group:
        out.append(ReadRange(pack, start, end - start, tuple(group)))
    return out


@dataclass(frozen=True)
class PrunePlan:
    delete_packs: tuple[str, ...]  # no kept snapshot needs any blob in them
    repack: tuple[str, ...]  # partly used: copy the used blobs, then delete
    unused_bytes: int


def plan_prune(kept: Iterable[Manifest], packs: Mapping[str, Sequence[tuple[bytes, BlobRef]]],
               *, repack_threshold: float = 0.5) -> PrunePlan:
    """Which packs may go.  A pack holding any chunk a kept manifest needs is never deleted.

    Packs whose unused share is at least ``repack_threshold`` are listed for
    repacking (the engine writes the used blobs into new packs and a new index
    before it deletes the old pack and index).
    """
    used: set[bytes] = set()
    for manifest in kept:
        used |= manifest.stored_ids()
    delete, repack, unused_bytes = [], [], 0
    for pack, blobs in sorted(packs.items()):
        dead = [ref.length for cid, ref in blobs if cid not in used]
        unused_bytes += sum(dead)
        if len(dead) == len(blobs):
            delete.append(pack)
        elif dead and sum(dead) >= repack_threshold * sum(r.length for _c, r in blobs):
            repack.append(pack)
    return PrunePlan(tuple(delete), tuple(repack), unused_bytes)
