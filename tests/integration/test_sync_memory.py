"""Memory state in snapshots (recipe ``sync.memory``): a save of a short pause, or the
managed save image of a VM stopped with one; disks and memory of the same instant."""

from __future__ import annotations

from pathlib import Path

import libvirt
from sync_env import MIB, hmp_write, run, same_content, world

from vmclient.store import layout
from vmclient.virt.libvirt import backup_pull


def test_running_vm_memory_point_matches_disks(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("mem", sync="memory", data=[(0x31, 0, 2 * MIB)])
        first = w.sync(dom)
        assert (first.mode, first.seq) == ("full", 1)
        assert first.memory_bytes > 0 and first.downtime_seconds > 0
        state, _reason = dom.state()
        assert state == libvirt.VIR_DOMAIN_RUNNING  # resumed after the short pause
        assert not list(w.memory_dir.iterdir())  # the plaintext RAM image is gone

        hmp_write(dom, f"write -P 0x32 {5 * MIB} 65536")
        second = w.sync(dom)
        # the save/restore keeps the dirty bitmap: still incremental, one disk chunk
        # (the memory image is always read whole)
        mem_chunks = -(-second.memory_bytes // (64 * 1024))
        assert (second.mode, second.chunks_covered) == ("incremental", 1 + mem_chunks)
        dest, mem = tmp_path / "b" / "mem.qcow2", tmp_path / "b" / "mem.save"
        w.restore_b(dom.name(), dest, memory=mem)
        assert same_content(w.disk(dom.name()), dest)
        # the memory image restores: a VM of the same definition resumes from it
        assert w.verify(dom.name()).chunks > 0
        dom.destroy()
        w.conn.restoreFlags(str(mem), None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        state, reason = w.conn.lookupByName(dom.name()).state()
        assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING,
                                   libvirt.VIR_DOMAIN_RUNNING_RESTORED)


def test_backup_job_left_by_a_killed_sync_does_not_block_the_memory_point(
        tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("left", sync="memory", data=[(0x51, 0, MIB)])
        scratch = w.scratch / "left-over"
        scratch.mkdir(parents=True)
        scratch.chmod(0o777)  # QEMU creates the socket
        # what a sync killed in the middle of its read leaves in QEMU: a running pull job
        run(backup_pull(w.hv, dom.UUIDString(), dom.name(), str(scratch / "s"),
                        {"vda": str(scratch / "vda.qcow2")}, "left-over", None))
        assert dom.jobStats().get("type", 0) != 0
        r = w.sync(dom)  # the save of the memory point ends that job first
        assert (r.mode, r.seq) == ("full", 1) and r.memory_bytes > 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING


def test_paused_vm_stays_paused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("pmem", sync="memory", data=[(0x41, 0, MIB)])
        dom.suspend()
        r = w.sync(dom)
        assert r.memory_bytes > 0
        assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED


def test_managed_saved_vm_syncs_its_image_as_memory(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("msave", sync="memory", data=[(0x51, 0, MIB)])
        dom.managedSave(0)
        r = w.sync(dom)
        assert r.mode == "at-rest"
        image = Path(f"/var/lib/libvirt/qemu/save/{dom.name()}.save")
        assert r.memory_bytes == image.stat().st_size
        mem = tmp_path / "b" / "m.save"
        w.restore_b(dom.name(), tmp_path / "b" / "d.qcow2", memory=mem)
        assert mem.read_bytes() == image.read_bytes()
        assert dom.hasManagedSaveImage(0)  # untouched

        # a disks-only restore of the same snapshot needs no memory destination
        w.restore_b(dom.name(), tmp_path / "b" / "only.qcow2",
                    snapshot=layout.snapshot_name(1))
