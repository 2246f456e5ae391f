"""The sync's pure core (vmclient.sync.plan): which VMs, incremental or full, the next
seq, the chunk bookkeeping, and the step order that makes an interruption harmless."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from vmclient.host.files import mount_of
from vmclient.store.chunker import ZERO_ID, Chunk
from vmclient.store.documents import Pointer, check_pointer_fresh
from vmclient.store.errors import LocalSyncError, RemoteIntegrityError
from vmclient.store.objects import ChunkMap, Manifest
from vmclient.sync import plan
from vmclient.sync.job import MEMORY, SyncMode, SyncRefused, SyncResult
from vmclient.sync.plan import SEQUENCE, Step
from vmclient.sync.state import VMSyncState
from vmclient.virt.libvirt import DiskSource

C = 65536
SRC = Path(__file__).resolve().parents[3] / "python-services" / "src"


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def manifest(seq: int, disks: dict[str, list[int]], memory: int = 0) -> Manifest:
    maps = [ChunkMap(name, "system", len(ids) * C, C, tuple(cid(i) for i in ids))
            for name, ids in disks.items()]
    if memory:
        maps.append(ChunkMap(MEMORY, MEMORY, memory * C, C, tuple(cid(900 + i)
                                                                 for i in range(memory))))
    return Manifest("snapshot", "office", f"{seq:010d}", seq, 0, "k", tuple(maps), "dev")


@pytest.mark.parametrize(("kind", "sync", "synced"), [
    ("business", "disks", True), ("business", "memory", True),
    ("business", "off", False), ("business", None, False),
    ("private", "disks", False), ("private", "off", False), (None, None, False),
])
def test_only_business_vms_with_sync_on_are_synced(kind: str | None, sync: str | None,
                                                   synced: bool) -> None:
    reason = plan.refusal(kind, sync)
    assert (reason == "") == synced
    if not synced:
        assert "private VMs never are" in reason and repr(kind) in reason


@pytest.mark.parametrize(("active", "sync", "managed_save", "point"), [
    (True, "memory", False, plan.SAVE), (True, "memory", True, plan.SAVE),
    (False, "memory", True, plan.MANAGED), (False, "memory", False, ""),
    (True, "disks", False, ""), (False, "disks", True, ""),
])
def test_memory_point(active: bool, sync: str, managed_save: bool, point: str) -> None:
    assert plan.memory_point(active, sync, managed_save) == point


SIZES = {"vda": 4 * C, "vdb": 2 * C}
PARENT = manifest(3, {"vda": [1, 2, 3, 4], "vdb": [5, 6]}, memory=2)


@pytest.mark.parametrize(("parent", "recorded", "checkpoints", "sizes", "expected"), [
    (PARENT, "cp3", ("cp2", "cp3"), SIZES, ("cp3", "")),  # the memory image does not count
    (None, "", (), SIZES, (None, "no parent snapshot")),  # the first sync
    (PARENT, "cp3", (), SIZES, (None, "no usable checkpoint")),  # QEMU was killed
    (PARENT, "", ("cp3",), SIZES, (None, "no usable checkpoint")),  # no local record
    (PARENT, "cp3", ("cp3",), {"vda": 5 * C, "vdb": 2 * C}, (None, "disks changed")),  # resized
    (PARENT, "cp3", ("cp3",), {**SIZES, "vdc": C}, (None, "disks changed")),  # a disk added
    (PARENT, "cp3", ("cp3",), {"vda": 4 * C}, (None, "disks changed")),  # one removed
])
def test_incremental_only_with_the_recorded_checkpoint_and_the_same_disks(
        parent: Manifest | None, recorded: str, checkpoints: tuple[str, ...],
        sizes: dict[str, int], expected: tuple[str | None, str]) -> None:
    assert plan.backup_mode(parent, recorded, checkpoints, sizes) == expected


@pytest.mark.parametrize(("incremental", "resumed", "then"), [
    ("cp3", False, plan.FULL_NOW),  # libvirt refused the incremental: the whole disks
    ("cp3", True, plan.RETAKE),  # the VM ran on after its memory was saved: a new point
    (None, False, ""), (None, True, ""),  # a full backup failed: the failure stands
])
def test_a_failed_backup_falls_back_to_a_full_one_once(incremental: str | None, resumed: bool,
                                                       then: str) -> None:
    assert plan.after_failed_backup(incremental, resumed) == then


def test_next_seq_skips_a_snapshot_no_pointer_names_and_ignores_other_names() -> None:
    assert plan.next_seq(None, []) == 1
    assert plan.next_seq(PARENT, ["0000000001", "0000000003"]) == 4
    assert plan.next_seq(PARENT, ["0000000003", "0000000005"]) == 5 + 1  # 5: never pointed
    junk = [".tmp-0000000009-ab", "0000000009.tmp", "123", "000000000a", "٠٠٠٠٠٠٠٠٠٩",
            "00000000099"]
    assert plan.next_seq(PARENT, junk) == 4


MOUNTS = """\
sysfs /sys sysfs rw 0 0
/dev/vda1 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid 0 0
/dev/vdb1 /run/vmclient/disk ext4 rw 0 0
tmpfs /mnt/my\\040ram tmpfs rw 0 0
"""


@pytest.mark.parametrize(("path", "mount"), [
    ("/run/vmclient/sync", ("/run", "tmpfs")),
    ("/run", ("/run", "tmpfs")),
    ("/run/vmclient/disk/sync", ("/run/vmclient/disk", "ext4")),  # the longest mount wins
    ("/run/vmclient/diskless", ("/run", "tmpfs")),  # a prefix, not a parent directory
    ("/var/lib/x", ("/", "ext4")),
    ("/mnt/my ram/sync", ("/mnt/my ram", "tmpfs")),  # \040 in /proc/self/mounts
])
def test_the_memory_directory_is_on_the_mount_holding_it(path: str,
                                                         mount: tuple[str, str]) -> None:
    assert mount_of(path, MOUNTS) == mount  # the memory directory's check (host.files)


def test_disks_are_luks_qcow2_all_or_none() -> None:
    plain, luks = DiskSource("vda", "/a", "qcow2"), DiskSource("vdb", "/b", "qcow2", "u-1")
    assert plan.encrypted("office", [plain, replace(plain, target="vdb")]) is False
    assert plan.encrypted("office", [replace(luks, target="vda"), luks]) is True
    for disks in ([plain, luks], [replace(luks, fmt="raw")]):
        with pytest.raises(SyncRefused, match="some disks are LUKS qcow2 and some not"):
            plan.encrypted("office", disks)
    assert plan.roles(3) == ("system", "user", "user") and plan.roles(0) == ()


def test_an_incremental_read_keeps_the_parent_ids_it_does_not_cover() -> None:
    result = SyncResult("office", mode=SyncMode.INCREMENTAL)
    book = plan.ChunkBook(result, PARENT, C)
    book.begin("vda", 4 * C)
    book.add("vda", Chunk(1, cid(20), b"x" * C))
    book.add("vda", Chunk(3, ZERO_ID, b""))  # zeroed since: covered, not read
    book.begin(MEMORY, 2 * C, whole=True)  # never the parent's memory ids
    book.add(MEMORY, Chunk(0, cid(30), b"m" * C))
    book.add(MEMORY, Chunk(1, cid(31), b"m" * 10))
    assert book.chunk_map("vda", "system", 4 * C).ids == (cid(1), cid(20), cid(3), ZERO_ID)
    assert book.chunk_map(MEMORY, MEMORY, 2 * C).ids == (cid(30), cid(31))
    assert (result.chunks_covered, result.chunks_read, result.bytes_read) == \
        (4, 3, 2 * C + 10)


@pytest.mark.parametrize("mode", [SyncMode.FULL, SyncMode.AT_REST])
def test_a_full_read_must_cover_every_chunk(mode: str) -> None:
    book = plan.ChunkBook(SyncResult("office", mode=mode), PARENT, C)
    book.begin("vda", 4 * C)
    for i in (0, 1, 3):
        book.add("vda", Chunk(i, cid(i), b"x"))
    with pytest.raises(LocalSyncError, match="disk vda: the capture does not cover chunk 2"):
        book.chunk_map("vda", "system", 4 * C)
    assert plan.covered_bytes(4 * C + 10, [0, 4], C) == C + 10


def test_a_vm_at_rest_keeps_its_checkpoint_for_the_next_incremental() -> None:
    before = VMSyncState(3, "cp3")
    assert plan.record(before, 4, SyncMode.AT_REST, "cp4") == VMSyncState(4, "cp3")
    assert plan.record(before, 4, SyncMode.FULL, "cp4") == VMSyncState(4, "cp4")
    assert not plan.drops_checkpoints(SyncMode.AT_REST)
    assert plan.drops_checkpoints(SyncMode.INCREMENTAL) and plan.drops_checkpoints(SyncMode.FULL)


# -- the step order: what a sync stopped after each step leaves ------------------------------

@dataclass
class World:
    """What a sync leaves behind for the next one: the repository (chunks, snapshots and
    the chunks each needs, ``latest``), the local record and libvirt's checkpoints."""

    chunks: set[int] = field(default_factory=set)
    snapshots: dict[int, frozenset[int]] = field(default_factory=dict)
    latest: int = 0
    record: VMSyncState = field(default_factory=VMSyncState)
    checkpoints: set[str] = field(default_factory=set)

    def parent(self) -> Manifest | None:
        return manifest(self.latest, {"vda": sorted(self.snapshots[self.latest])}) \
            if self.latest else None


def sync(w: World, order: tuple[Step, ...], stop_after: int, new: set[int]) -> None:
    """One sync of a running VM in ``order``, stopped after ``stop_after`` steps: what
    each step writes (the engine's :meth:`Run.steps`), decided by the plan."""
    seq = plan.next_seq(w.parent(), (f"{s:010d}" for s in w.snapshots))
    cp = plan.checkpoint_name(seq, "ab")
    incremental, _why = plan.backup_mode(w.parent(), w.record.checkpoint, w.checkpoints,
                                         {"vda": len(new) * C})
    mode = SyncMode.INCREMENTAL if incremental else SyncMode.FULL
    for step in order[:stop_after]:
        if step is Step.CAPTURE:  # the backup job begins with a new checkpoint
            w.checkpoints.add(cp)
        elif step is Step.UPLOAD:  # packs, then their index
            w.chunks |= new
        elif step is Step.SNAPSHOT:
            w.snapshots[seq] = frozenset(new)
        elif step is Step.LATEST:
            w.latest = seq
        elif step is Step.RECORD:
            w.record = plan.record(w.record, seq, mode, cp)
        elif step is Step.CHECKPOINTS and plan.drops_checkpoints(mode):
            w.checkpoints = {cp}


def whole(w: World, before: World) -> list[str]:
    """What is wrong with ``w`` for the next sync (nothing, if the order is right)."""
    if w.latest and w.latest not in w.snapshots:
        return ["latest names a snapshot that is not stored"]
    wrong = []
    if w.latest and not w.snapshots[w.latest] <= w.chunks:
        wrong.append("latest names a snapshot whose chunks are not all stored")
    if w.latest not in (before.latest, max(w.snapshots, default=0)):
        wrong.append("latest moved to something but the new snapshot")
    if any(not needs <= w.chunks for needs in w.snapshots.values()):
        wrong.append("a stored snapshot needs chunks that are not stored")
    pointer = Pointer("office", "dev", f"{w.latest:010d}", max(w.latest, 1), 0, "00")
    try:
        check_pointer_fresh(pointer, w.record.seq, "latest")
    except RemoteIntegrityError:
        wrong.append("the record is ahead of latest: the next sync sees a rollback")
    if w.record.checkpoint and w.record.checkpoint not in w.checkpoints:
        wrong.append("the record's checkpoint is gone: the next sync reads everything")
    if plan.next_seq(w.parent(), (f"{s:010d}" for s in w.snapshots)) in w.snapshots:
        wrong.append("the next sync would reuse a stored seq")
    return wrong


def started() -> World:
    """After two complete syncs (a full one, then an incremental one)."""
    w = World()
    sync(w, SEQUENCE, len(SEQUENCE), {1, 2})
    sync(w, SEQUENCE, len(SEQUENCE), {1, 3})
    assert (w.latest, w.record.seq, len(w.checkpoints)) == (2, 2, 1)
    return w


@pytest.mark.parametrize("stop_after", range(len(SEQUENCE) + 1))
def test_a_sync_stopped_after_any_step_leaves_the_repository_whole(stop_after: int) -> None:
    w = started()
    before = replace(w, chunks=set(w.chunks), snapshots=dict(w.snapshots),
                     checkpoints=set(w.checkpoints))
    sync(w, SEQUENCE, stop_after, {1, 4})
    assert whole(w, before) == []
    if stop_after <= SEQUENCE.index(Step.LATEST):
        assert w.latest == before.latest  # the previous snapshot stands
    sync(w, SEQUENCE, len(SEQUENCE), {1, 5})  # the next sync completes, incrementally
    assert whole(w, before) == [] and w.latest == max(w.snapshots)
    assert w.record.seq == w.latest and w.checkpoints == {w.record.checkpoint}


def test_the_order_is_packs_index_snapshot_latest_record_checkpoints() -> None:
    assert [s.value for s in SEQUENCE] == ["keys", "parent", "capture", "upload", "snapshot",
                                          "latest", "record", "checkpoints"]


@pytest.mark.parametrize(("first", "second"), [
    (Step.UPLOAD, Step.SNAPSHOT), (Step.SNAPSHOT, Step.LATEST), (Step.LATEST, Step.RECORD),
    (Step.RECORD, Step.CHECKPOINTS), (Step.CAPTURE, Step.RECORD)])
def test_any_other_order_leaves_something_broken_after_some_step(first: Step,
                                                                 second: Step) -> None:
    """The check above can fail: swap two steps and a stop between them is caught."""
    order = list(SEQUENCE)
    i, j = order.index(first), order.index(second)
    order[i], order[j] = order[j], order[i]
    found = []
    for stop_after in range(len(order) + 1):
        w = started()
        before = replace(w, snapshots=dict(w.snapshots))
        sync(w, tuple(order), stop_after, {1, 4})
        found += whole(w, before)
    assert found, f"{first} and {second} swapped went unnoticed"



def test_the_core_imports_no_io_adapter() -> None:
    """plan and job load without libvirt, D-Bus, the transport or the capture adapter."""
    code = ("import sys; import vmclient.sync.plan, vmclient.sync.job; print(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('libvirt', 'dbus_fast', 'paramiko') or "
            "m.startswith(('vmclient.virt', 'vmclient.transport', 'vmclient.sync.capture', "
            "'vmclient.sync.engine', 'vmclient.sync.nbd'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(SRC)})
    assert out.stdout.strip() == "[]"
