"""Memory state in snapshots (recipe ``sync.memory``): a save of a short pause, or the
managed save image of a VM stopped with one; disks and memory of the same instant."""

from __future__ import annotations

import asyncio
from pathlib import Path

import libvirt
import pytest
from sync_env import MIB, hmp_write, same_content, world

from vmclient.store import layout
from vmclient.virt.libvirt import backup_pull

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_running_vm_memory_point_matches_disks(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("mem", sync="memory", data=[(0x31, 0, 2 * MIB)])
        first = await w.sync(dom)
        assert (first.mode, first.seq) == ("full", 1)
        assert first.memory_bytes > 0 and first.downtime_seconds > 0
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING  # resumed after the short pause
        assert not list(w.memory_dir.iterdir())  # the plaintext RAM image is gone

        hmp_write(dom, f"write -P 0x32 {5 * MIB} 65536")
        second = await w.sync(dom)
        # the save/restore keeps the dirty bitmap: still incremental, one disk chunk
        # (the memory image is always read whole)
        mem_chunks = -(-second.memory_bytes // (64 * 1024))
        assert (second.mode, second.chunks_covered) == ("incremental", 1 + mem_chunks)
        dest, mem = tmp_path / "b" / "mem.qcow2", tmp_path / "b" / "mem.save"
        await w.restore_b(dom.name(), dest, memory=mem)
        assert same_content(w.disk(dom.name()), dest)
        # the memory image restores: a VM of the same definition resumes from it
        assert (await w.verify(dom.name())).chunks > 0
        dom.destroy()
        w.conn.restoreFlags(str(mem), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        state, reason = w.conn.lookupByName(dom.name()).state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING,
                                   libvirt.VIR_DOMAIN_RUNNING_RESTORED)


async def test_backup_job_left_by_a_killed_sync_does_not_block_the_memory_point(
        tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("left", sync="memory", data=[(0x51, 0, MIB)])
        scratch = w.scratch / "left-over"
        scratch.mkdir(parents=True)
        scratch.chmod(0o777)  # QEMU creates the socket
        # what a sync killed in the middle of its read leaves in QEMU: a running pull job
        await backup_pull(w.hv, dom.UUIDString(), dom.name(), str(scratch / "s"),
                          {"vda": str(scratch / "vda.qcow2")}, "left-over", None)
        assert dom.jobStats().get("type", 0) != 0
        r = await w.sync(dom)  # the save of the memory point ends that job first
        assert (r.mode, r.seq) == ("full", 1) and r.memory_bytes > 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


async def test_memory_sync_of_a_vm_with_an_agent_channel_leaves_no_job(tmp_path: Path) -> None:
    """After the restore, the first resume makes QEMU report the virtio-serial port;
    libvirt 9.0's handler of that event waits for a job the backup job excludes, and
    an ``abortJob`` left the backup's end queued behind it (python-services/docs/
    sync.md): the job outlived the sync by up to 30 s."""
    async with world(tmp_path) as w:
        dom = w.create("agent", sync="memory", data=[(0x61, 0, MIB)], agent=True)
        r = await w.sync(dom)
        assert r.memory_bytes > 0 and dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert dom.jobStats().get("type", 0) == 0  # the backup job has ended
        dom.managedSave(0)  # what powerd does on lid close
        assert dom.hasManagedSaveImage(0)


async def test_paused_vm_stays_paused(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("pmem", sync="memory", data=[(0x41, 0, MIB)])
        dom.suspend()
        r = await w.sync(dom)
        assert r.memory_bytes > 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


async def test_managed_saved_vm_syncs_its_image_as_memory(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("msave", sync="memory", data=[(0x51, 0, MIB)])
        dom.managedSave(0)
        r = await w.sync(dom)
        assert r.mode == "at-rest"
        image = Path(f"/var/lib/libvirt/qemu/save/{dom.name()}.save")
        saved = await asyncio.to_thread(image.read_bytes)
        assert r.memory_bytes == len(saved)
        mem = tmp_path / "b" / "m.save"
        await w.restore_b(dom.name(), tmp_path / "b" / "d.qcow2", memory=mem)
        assert await asyncio.to_thread(mem.read_bytes) == saved
        assert dom.hasManagedSaveImage(0)  # untouched

        # a disks-only restore of the same snapshot needs no memory destination
        await w.restore_b(dom.name(), tmp_path / "b" / "only.qcow2",
                          snapshot=layout.snapshot_name(1))
