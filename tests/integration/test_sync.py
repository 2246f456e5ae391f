"""Sync → restore on a second device; incremental syncs upload about what changed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sync_env import MIB, hmp_write, qemu_io, same_content, world

from vmclient.store import layout
from vmclient.sync.engine import SyncRefused

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHANGED = [(0x5a, off * MIB + 128 * 1024, 64 * 1024) for off in range(0, 60, 3)]  # 20 x 64 KiB



def write_partial(path: Path, offset: int, data: bytes) -> None:
    """A 64 MiB file holding ``data`` at ``offset``: what an interrupted restore left."""
    with open(path, "wb") as f:
        f.truncate(64 * MIB)
        f.seek(offset)
        f.write(data)

async def test_running_vm_sync_restore_incremental(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("run", data=[(0x11, 0, 4 * MIB), (0x22, 10 * MIB, 64 * 1024),
                                    (0x33, 40 * MIB, 2 * MIB)])
        first = await w.sync(dom)
        assert (first.seq, first.mode) == (1, "full")
        assert first.chunks_read == 64 + 1 + 32  # only data chunks: zeros are not read
        r1 = await w.restore_b(dom.name(), tmp_path / "b" / "r1.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r1.qcow2")
        assert r1.chunks_fetched == 3  # 64 + 1 + 32 chunks, but only three distinct ones

        for pattern, off, n in CHANGED:
            hmp_write(dom, f"write -P {pattern:#x} {off} {n}")
        hmp_write(dom, f"write -z {40 * MIB} {64 * 1024}")  # data → zeros is a change too
        hmp_write(dom, f"write -P 0x77 {10 * MIB} {64 * 1024}")
        changed = (len(CHANGED) + 2) * 64 * 1024
        second = await w.sync(dom)
        assert (second.seq, second.mode) == (2, "incremental")
        assert second.chunks_covered == len(CHANGED) + 2  # the dirty bitmap, nothing else
        assert second.chunks_read == len(CHANGED) + 1  # the zeroed chunk is not read
        assert second.uploaded_bytes <= 1.3 * changed + 64 * 1024
        r2 = await w.restore_b(dom.name(), tmp_path / "b" / "r2.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r2.qcow2")
        assert not same_content(tmp_path / "b" / "r1.qcow2", tmp_path / "b" / "r2.qcow2")
        assert r2.seq == 2

        # the older snapshot stays restorable
        await w.restore_b(dom.name(), tmp_path / "b" / "old.qcow2", snapshot=layout.snapshot_name(1))
        assert same_content(tmp_path / "b" / "old.qcow2", tmp_path / "b" / "r1.qcow2")

        # nothing changed: nothing but the snapshot and the pointer
        third = await w.sync(dom)
        assert (third.mode, third.chunks_read, third.uploaded_chunks) == ("incremental", 0, 0)


async def test_stopped_vm_read_at_rest_and_restore_resumes(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("off", start=False, data=[(0x44, MIB, 3 * MIB), (0x45, 30 * MIB, MIB)])
        first = await w.sync(dom)
        assert (first.mode, first.seq) == ("at-rest", 1)
        qemu_io(w.disk(dom.name()), f"write -P 0x46 {2 * MIB} 65536")
        second = await w.sync(dom)
        assert second.uploaded_chunks == 1  # full read, compared by chunk id
        dest = tmp_path / "b" / "off.qcow2"
        # an interrupted restore: the partial file already holds some right chunks
        dest.parent.mkdir(parents=True)
        partial = dest.with_name(dest.name + ".partial")
        write_partial(partial, MIB, bytes([0x44]) * MIB)
        r = await w.restore_b(dom.name(), dest)
        assert r.chunks_local == 1 and r.chunks_fetched == 2  # 0x44 is local: 0x45 and 0x46
        assert same_content(w.disk(dom.name()), dest)
        assert not partial.exists()
        await w.restore_b(dom.name(), tmp_path / "b" / "off.raw", fmt="raw")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "off.raw")


async def test_private_vm_never_uploaded(tmp_path: Path) -> None:
    """Nothing is written for a VM the plan refuses (every kind and sync setting:
    tests/unit/sync/test_sync_plan.py), not even the device lock."""
    async with world(tmp_path) as w:
        dom = w.create("priv", kind="private", sync="disks", data=[(0x99, 0, MIB)], start=False)
        with pytest.raises(SyncRefused, match="never"):
            await w.sync(dom)
        assert not (w.repo_dir / "devices").exists()


async def test_managed_save_between_syncs_keeps_the_bitmap(tmp_path: Path) -> None:
    """A clean stop (managed save, as the power manager does) keeps the checkpoint usable."""
    async with world(tmp_path) as w:
        dom = w.create("saved", data=[(0x21, 0, 2 * MIB)])
        assert (await w.sync(dom)).mode == "full"
        hmp_write(dom, f"write -P 0x22 {8 * MIB} 65536")
        dom.managedSave(0)
        assert (await w.sync(dom)).mode == "at-rest"  # reads the disk at rest, compares by id
        dom.create()  # resumes from the managed save
        hmp_write(dom, f"write -P 0x23 {9 * MIB} 65536")
        after = await w.sync(dom)
        # dirty since the checkpoint of sync 1: both writes, nothing else
        assert (after.mode, after.chunks_covered, after.uploaded_chunks) == ("incremental", 2, 1)
        await w.restore_b(dom.name(), tmp_path / "b" / "s.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "s.qcow2")
