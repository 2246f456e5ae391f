"""The sync's pure core: which steps in which order, what to read, what to write.

No I/O here: the engine (:mod:`.engine`) runs :data:`SEQUENCE` step by step
under the device lock, asks these functions what to do, and leaves the doing to
its adapters (the lock, :mod:`.capture` for the backup job and NBD, the
repository).  The order is what makes an interruption harmless
(repository-format.md §8.3): a step only writes what the steps before it made
safe to name, so a sync stopped after any step leaves the previous snapshot and
``latest`` whole, and the next sync finds its own way from what is there
(:func:`next_seq` past an unpointed snapshot, an incremental read since an older
checkpoint when the local record lags, packs found again by their headers).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ..store import layout
from ..store.chunker import Chunk, chunk_count
from ..store.documents import Pointer
from ..store.errors import LocalSyncError
from ..store.objects import ChunkMap, Manifest
from .job import MEMORY, Hooks, SyncInterrupted, SyncJob, SyncMode, SyncRefused, SyncResult
from .state import VMSyncState

if TYPE_CHECKING:
    from ..virt.libvirt import DiskSource

SAVE, MANAGED = "save", "managed"  # where a snapshot's memory image comes from


class Step(enum.StrEnum):
    """One step of a sync, under the device lock (taking it sweeps what a killed sync
    left in the VM's directory)."""

    KEYS = "keys"  # the data key wrapped for each recipient, where absent
    PARENT = "parent"  # (reads) the local record, ``latest`` and its snapshot, the next seq
    CAPTURE = "capture"  # the consistent point and what it covers; the index read meanwhile
    UPLOAD = "upload"  # new chunks in packs, then one index naming them; the job ends
    SNAPSHOT = "snapshot"  # the snapshot at the new seq, exclusive
    LATEST = "latest"  # the pointer, replaced
    RECORD = "record"  # the local record: seq and the checkpoint to read from next time
    CHECKPOINTS = "checkpoints"  # every other libvirt checkpoint deleted (running VM)


SEQUENCE: tuple[Step, ...] = tuple(Step)  # the engine runs them in this order
_SNAPSHOT_RE = re.compile(r"[0-9]{10}")


# -- before the lock --------------------------------------------------------------------

def refusal(kind: str | None, sync: str | None) -> str:
    """Why a VM is not synchronised ("": it is), from its provisioning metadata."""
    if kind != "business" or sync in (None, "off"):
        return (f"kind {kind!r}, sync {sync!r}: only business VMs with sync enabled are "
                "uploaded; private VMs never are")
    return ""


def memory_point(active: bool, sync: str | None, managed_save: bool) -> str:
    """Where the snapshot's memory image comes from: a save of a short pause of the
    running VM (:data:`SAVE`), the managed save image of a stopped one
    (:data:`MANAGED`), or nowhere ("")."""
    if sync != MEMORY:
        return ""
    if active:
        return SAVE
    return MANAGED if managed_save else ""


# -- the parent and the new snapshot's number --------------------------------------------

def next_seq(parent: Manifest | None, untrusted_names: Iterable[str]) -> int:
    """One more than any snapshot stored (names in ``snapshots/``): an interrupted sync
    may have left one that no pointer names, and its seq is never used again."""
    last = parent.seq if parent else 0
    for untrusted_name in untrusted_names:
        if _SNAPSHOT_RE.fullmatch(untrusted_name):
            last = max(last, int(untrusted_name))
    return last + 1


def checkpoint_name(seq: int, token: str) -> str:
    """The libvirt checkpoint this sync's backup job creates (``token``: random hex)."""
    return f"vmclient-{seq}-{token}"


# -- the capture --------------------------------------------------------------------------

def roles(count: int) -> tuple[str, ...]:
    """The roles of a VM's disks in the snapshot, in their domain order."""
    return tuple("system" if i == 0 else "user" for i in range(count))


def encrypted(vm: str, disks: Sequence[DiskSource]) -> bool:
    """Whether the VM's disks are LUKS qcow2 (all or none)."""
    luks = [d for d in disks if d.secret]
    if not luks:
        return False
    if len(luks) != len(disks) or any(d.fmt != "qcow2" for d in luks):
        raise SyncRefused(vm, "some disks are LUKS qcow2 and some not: not supported")
    return True


def backup_mode(parent: Manifest | None, recorded: str, checkpoints: Collection[str],
                sizes: Mapping[str, int]) -> tuple[str | None, str]:
    """How a running VM is read: the checkpoint an incremental backup reads the dirty
    clusters since, or None and why the whole disks are read.

    ``recorded`` is the checkpoint of the local record, ``checkpoints`` the VM's
    (libvirt drops them all when QEMU was killed), ``sizes`` its disks' now.
    """
    if parent is None:
        return None, "no parent snapshot"
    if recorded not in checkpoints:
        return None, "no usable checkpoint"
    if {(c.name, c.size) for c in parent.disks if c.role != MEMORY} != set(sizes.items()):
        return None, "disks changed"
    return recorded, ""


FULL_NOW, RETAKE = "full now", "retake"


def after_failed_backup(incremental: str | None, resumed: bool) -> str:
    """What follows a backup that libvirt refused or whose dirty extents are not whole
    chunks: "" (the failure stands: it was a full backup already), a full backup at
    once (:data:`FULL_NOW`), or the whole consistent point again (:data:`RETAKE`) when
    the VM had resumed after its memory was saved, which is older now."""
    if incremental is None:
        return ""
    return RETAKE if resumed else FULL_NOW


def covered_bytes(size: int, covered: Iterable[int], chunk_size: int) -> int:
    """The bytes of a capture's covered chunks (the last chunk of a disk may be short)."""
    return sum(min(chunk_size, size - i * chunk_size) for i in covered)


class ChunkBook:
    """The chunk ids of each capture as its chunks go by, and the counts of ``result``.

    An incremental read covers the dirty chunks only: every other id is the
    parent snapshot's for that disk.  A full read, a disk at rest and a memory
    image (``whole``) must cover every chunk.
    """

    def __init__(self, result: SyncResult, parent: Manifest | None, chunk_size: int) -> None:
        self.result, self.chunk_size = result, chunk_size
        self.base = {d.name: d for d in parent.disks} \
            if parent is not None and result.mode == SyncMode.INCREMENTAL else {}
        self.ids: dict[str, list[bytes | None]] = {}

    def begin(self, name: str, size: int, *, whole: bool = False) -> None:
        base = None if whole else self.base.get(name)
        self.ids[name] = list(base.ids) if base is not None \
            else [None] * chunk_count(size, self.chunk_size)

    def add(self, name: str, chunk: Chunk) -> None:
        self.ids[name][chunk.index] = chunk.id
        self.result.chunks_covered += 1
        self.result.chunks_read += not chunk.is_zero
        self.result.bytes_read += len(chunk.data)

    def chunk_map(self, name: str, role: str, size: int) -> ChunkMap:
        ids = self.ids[name]
        missing = [i for i, cid in enumerate(ids) if cid is None]
        if missing:
            raise LocalSyncError(f"disk {name}: the capture does not cover chunk {missing[0]}")
        return ChunkMap(name, role, size, self.chunk_size,
                        tuple(cid for cid in ids if cid is not None))


def watched(chunks: Iterator[Chunk], vm: str, hooks: Hooks, total: int,
            chunk_size: int) -> Iterator[Chunk]:
    """``chunks``, reporting progress and stopping between two chunks when asked."""
    done = 0
    hooks.progress(0, total)
    for chunk in chunks:
        if hooks.interrupted():
            raise SyncInterrupted(vm, f"{done} of {total} bytes read")
        done = min(total, done + (len(chunk.data) or chunk_size))  # a zero chunk: no data
        hooks.progress(done, total)
        yield chunk


# -- the commit ----------------------------------------------------------------------------

def snapshot(job: SyncJob, vm: str, seq: int, parent: Manifest | None,
             maps: tuple[ChunkMap, ...], domain: str, memory_sha256: str, now: int
             ) -> Manifest:
    """The snapshot a sync writes (``domain``: the VM's persistent definition)."""
    meta = {**job.meta, "uuid": job.uuid, "domain": domain,
            **({"memory_sha256": memory_sha256} if memory_sha256 else {})}
    return Manifest("snapshot", vm, layout.snapshot_name(seq), seq, now, job.keys.check, maps,
                    job.device_id, parent.label if parent else "", meta)


def pointer(m: Manifest, digest: str, now: int) -> Pointer:
    """``latest`` naming the snapshot ``m`` stored with ``digest``."""
    return Pointer(m.subject, m.device, m.label, m.seq, now, digest)


def record(previous: VMSyncState, seq: int, mode: SyncMode | None, checkpoint: str
           ) -> VMSyncState:
    """The local record after ``latest`` names snapshot ``seq``: a VM read at rest got no
    new checkpoint, so its next incremental read is still since the previous one."""
    return VMSyncState(seq, previous.checkpoint if mode == SyncMode.AT_REST else checkpoint)


def drops_checkpoints(mode: SyncMode | None) -> bool:
    """Whether the VM's other checkpoints are deleted once the record names the new one
    (a VM at rest has no new one: its checkpoints stay)."""
    return mode != SyncMode.AT_REST
