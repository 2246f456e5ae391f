"""Crashes and a hostile server: QEMU killed, syncs killed, bytes flipped, objects swapped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fixtures_sshd import Account, ssh_server
from kill_env import child_args, leftovers, phases, unindexed
from sync_env import LOOP, MIB, Device, hmp_write, run, same_content, world

from vmclient.store import crypto, layout
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.localfs import LocalDirStore
from vmclient.store.remote import Entry, LockToken
from vmclient.store.transport import close_store
from vmclient.sync import maintenance, restore
from vmclient.sync.engine import CaptureLost, Hooks


def test_power_save_during_a_sync_ends_its_job_and_the_next_sync_completes(
        tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("save", data=[(0x61, 0, 2 * MIB)], random_mib=16)
        saved: list[bool] = []

        def power_saves(_done: int, _total: int) -> None:
            # powerd's managed save (lid closed, critical battery) while the sync reads
            if not saved:
                saved.append(True)
                asyncio.run_coroutine_threadsafe(
                    w.hv.managed_save(dom.UUIDString(), dom.name()), LOOP).result(60)
        with pytest.raises(CaptureLost, match=f"VM '{dom.name()}': its disks could not be read"):
            w.sync(dom, hooks=Hooks(progress=power_saves))
        assert saved and not dom.isActive() and dom.hasManagedSaveImage(0)
        assert not list(w.remote.root.glob(f"devices/*/vms/{dom.name()}/snapshots/*"))
        again = w.sync(dom)  # at rest now: the saved VM's disks
        assert (again.mode, again.seq) == ("at-rest", 1)
        w.restore_b(dom.name(), tmp_path / "b" / "r.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r.qcow2")


def test_qemu_killed_next_sync_reads_everything(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("crash", data=[(0x10, 0, 2 * MIB), (0x20, 20 * MIB, MIB)])
        assert w.sync(dom).mode == "full"
        hmp_write(dom, f"write -P 0x30 {5 * MIB} {MIB}")
        assert w.sync(dom).mode == "incremental"
        hmp_write(dom, f"write -P 0x40 {30 * MIB} 65536")
        os.kill(int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text()), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while dom.isActive() and time.monotonic() < deadline:
            time.sleep(0.05)
        dom.create()
        hmp_write(dom, f"write -P 0x50 {40 * MIB} 65536")
        after = w.sync(dom)
        assert after.mode == "full" and after.fallback, after
        assert after.chunks_read == 32 + 16 + 16 + 1 + 1  # everything with data, re-read
        assert after.uploaded_chunks == 2  # compared by id: only 0x40 and 0x50 are new
        w.restore_b(dom.name(), tmp_path / "b" / "r.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r.qcow2")
        hmp_write(dom, f"write -P 0x60 {50 * MIB} 65536")
        assert w.sync(dom).mode == "incremental"  # bitmaps are usable again


class FailAfter:
    """A RemoteStore that breaks the connection after ``n`` writes (a dropped link)."""

    def __init__(self, inner: LocalDirStore, n: int) -> None:
        self.inner, self.left = inner, n

    async def list(self, prefix: str) -> list[Entry]:
        return await self.inner.list(prefix)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self.inner.get(path, offset, length)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if "/packs/" in path:
            if self.left <= 0:
                raise ConnectionResetError("link dropped")
            self.left -= 1
        await self.inner.put_atomic(path, data, exclusive=exclusive)

    async def delete(self, path: str) -> None:
        await self.inner.delete(path)

    async def lock(self, path: str, holder: str, *, stale_after: int = 1800) -> LockToken:
        return await self.inner.lock(path, holder, stale_after=stale_after)

    async def unlock(self, token: LockToken) -> None:
        await self.inner.unlock(token)


def test_dropped_upload_resumes_without_reupload(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("drop", random_mib=40)
        with pytest.raises(ConnectionResetError):
            w.sync(dom, remote=FailAfter(w.remote, 1))  # one 16 MiB pack arrives
        assert not (w.repo_dir / layout.vm_pointer(w.a.id, dom.name())).exists()
        done = w.sync(dom)
        assert done.seq == 1 and done.uploaded_chunks <= 640 - 250, done  # ~256 arrived
        assert w.verify(dom.name()).chunks == 640


def test_sync_killed_at_random_points(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("kill", random_mib=24, data=[(0x61, 0, MIB)])
        seed = int(os.environ.get("VMCLIENT_KILL_SEED") or int.from_bytes(os.urandom(4)))
        print(f"random kills: seed {seed} (VMCLIENT_KILL_SEED={seed} repeats the choices)")
        rng = random.Random(seed)
        full = subprocess.run(w.child_args(dom), check=True, capture_output=True, text=True)
        assert '"seq": 1' in full.stdout
        hmp_write(dom, "write -P 0x62 0 65536")
        started = time.monotonic()  # an incremental sync in a process, start to end
        subprocess.run(w.child_args(dom), check=True, capture_output=True)
        span = time.monotonic() - started
        seqs, kills, hit = [2], 0, []
        for rep in range(20):
            for n in range(16):  # this round's changes
                hmp_write(dom, f"write -P {rep * 16 + n:#x} {rng.randrange(1024) * 65536} 65536")
            proc = subprocess.Popen(w.child_args(dom), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0.2 * span, span))
            proc.send_signal(signal.SIGKILL)
            _out, err = proc.communicate()
            assert proc.returncode in (0, -signal.SIGKILL), err  # killed, or it had finished
            kills += proc.returncode == -signal.SIGKILL
            done = phases(err)  # the write steps completed before the kill
            hit.append(f"{done[-1] if done else 'before the lock'}"
                       f"{'' if proc.returncode else ' (finished)'}")
            print(f"seed {seed} round {rep}: killed after {hit[-1]}")
            latest = w.verify(dom.name())  # the repository is whole after every kill
            assert latest.seq >= seqs[-1]
            seqs.append(latest.seq)
        assert kills >= 5, f"only {kills} of 20 syncs were killed before they ended: {hit}"
        final = w.sync(dom)
        assert final.seq > seqs[-1]
        assert leftovers(w.repo_dir, w.a.id) == []  # swept by the locked run, unlocked
        assert unindexed(w.remote, w, dom.name()) == ({}, {})  # adopted by its index
        w.verify(dom.name())
        w.restore_b(dom.name(), tmp_path / "b" / "k.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "k.qcow2")


def test_sync_killed_while_writing_its_lock_leaves_no_temporary(tmp_path: Path) -> None:
    """SIGKILL inside the lock's write, its temporary file written and not yet linked
    (the random kills hit this about once in three runs): the next sync removes that
    temporary, and only the lock's: a half-written ``device`` record of the admin's
    beside it is not the sync's to remove."""
    with world(tmp_path) as w:
        dom = w.create("lockkill", data=[(0x61, 0, MIB)], start=False)
        r = subprocess.run(child_args(w, dom, kill_after="lock-temporary"),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == -signal.SIGKILL and phases(r.stderr) == ["lock-temporary"], \
            r.stderr
        dev_dir = w.repo_dir / layout.device_dir(w.a.id)
        assert len(list(dev_dir.glob(".tmp-*"))) == 1 and not (dev_dir / "lock").exists()
        admins = dev_dir / ".tmp-device-0123456789abcdef"
        admins.write_bytes(b"half a device record")
        assert w.sync(dom).seq == 1
        assert sorted(p.name for p in dev_dir.glob(".tmp-*")) == [admins.name]
        admins.unlink()
        assert leftovers(w.repo_dir, w.a.id) == []


def plant_temporaries(root: Path, device: str, vm: str, account: Account | None) -> None:
    """Half-written uploads (``.tmp-*``) in the VM's pack directory and VM directory, owned
    by the device's account as its killed uploads are."""
    vm_dir = root / layout.vm_dir(device, vm)
    pack_dir = next(p for p in (vm_dir / "store" / "packs").iterdir() if p.is_dir())
    for d in (pack_dir, vm_dir, vm_dir / "snapshots"):
        tmp = d / ".tmp-killedupload"
        tmp.write_bytes(os.urandom(4096))
        if account is not None:
            pw = pwd.getpwnam(account.user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)


KILL_STEPS = ("keys", "lock", "pack", "index", "snapshot", "latest")  # keys: the first sync's


@pytest.mark.parametrize("over", ["local", "sftp"])
def test_sync_killed_after_each_write_step_leaves_nothing_behind(tmp_path: Path,
                                                                 over: str) -> None:
    """SIGKILL right after each write step (as orders_crash_driver.py does for a wipe);
    the next sync completes, leaves no temporary file, lock or unindexed pack, and the
    repository verifies."""
    with contextlib.ExitStack() as stack:
        w = stack.enter_context(world(tmp_path))
        server, account, remote, root = None, None, w.remote, w.repo_dir
        if over == "sftp":
            server = stack.enter_context(ssh_server())
            account = server.add_device(w.a.id)
            sftp_remote = server.store(account)
            stack.callback(lambda: run(close_store(sftp_remote)))
            remote, root = sftp_remote, server.repo
        dom = w.create("step", random_mib=24, data=[(0x61, 0, MIB)])
        for i, step in enumerate(KILL_STEPS):
            hmp_write(dom, f"write -P {0x40 + i:#x} {i * MIB} 65536")
            r = subprocess.run(child_args(w, dom, kill_after=step, server=server,
                                          account=account),
                               capture_output=True, text=True, timeout=300)
            done = phases(r.stderr)
            print(f"{over}: killed after {step}; steps done: {' '.join(done)}")
            assert r.returncode == -signal.SIGKILL and done[-1:] == [step], r.stderr
            if step == "pack":  # what a kill in the middle of uploads leaves as well
                plant_temporaries(root, w.a.id, dom.name(), account)
            after = w.sync(dom, remote=remote)
            assert leftovers(root, w.a.id) == [], step
            assert unindexed(remote, w, dom.name()) == ({}, {}), step
            v = run(maintenance.verify(remote, w.a.signers, w.keys[dom.name()],
                                       device=w.a.id, vm=dom.name()))
            assert v.seq == after.seq, step
        dest = tmp_path / "r.qcow2"
        run(restore.restore_vm(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                               vm=dom.name(), dest={"vda": dest}))
        assert same_content(w.disk(dom.name()), dest)


def _flip(path: Path, pos: int) -> bytes:
    data = path.read_bytes()
    path.write_bytes(data[:pos] + bytes([data[pos] ^ 0x40]) + data[pos + 1:])
    return data


def test_flipped_bytes_and_substituted_objects_are_refused(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        one = w.create("one", data=[(0x71, 0, 2 * MIB)], start=False)
        two = w.create("two", data=[(0x72, 0, MIB)], start=False)
        w.sync(one)
        w.sync(two)
        vm, repo_dir = one.name(), w.repo_dir
        vdir = repo_dir / layout.vm_dir(w.a.id, vm)
        pack = next((vdir / "store" / "packs").rglob("*"))
        while pack.is_dir():
            pack = next(pack.iterdir())
        targets = {
            "chunk": (pack, 20),  # in the first blob (the header is not read: indexed)
            "index": (next((vdir / "store" / "index").iterdir()), 40),
            "snapshot": (vdir / "snapshots" / layout.snapshot_name(1), 120),
            "pointer": (vdir / "latest", 100),
        }
        for obj_type, (path, pos) in targets.items():
            original = _flip(path, pos)
            with pytest.raises(RemoteIntegrityError) as exc:
                w.verify(vm)
            assert exc.value.obj_type == obj_type and str(path.relative_to(repo_dir)) in str(
                exc.value), exc.value
            with pytest.raises(RemoteIntegrityError):
                w.restore_b(vm, tmp_path / "b" / f"{obj_type}.qcow2")
            assert not (tmp_path / "b" / f"{obj_type}.qcow2").exists()
            path.write_bytes(original)
        key = repo_dir / layout.vm_key(w.a.id, vm, crypto.key_id(w.escrow.public_key()))
        original = _flip(key, 150)
        with pytest.raises(RemoteIntegrityError, match="wrapped-key"):
            w.keys_for_b(vm)
        key.write_bytes(original)
        w.verify(vm)

        # another VM's snapshot and pointer, put in place of this VM's
        other = repo_dir / layout.vm_dir(w.a.id, two.name())
        for name in ("snapshots/0000000001", "latest"):
            saved = (vdir / name).read_bytes()
            shutil.copy(other / name, vdir / name)
            with pytest.raises(RemoteIntegrityError, match="bad signature"):
                w.verify(vm)
            (vdir / name).write_bytes(saved)

        # another device's snapshot of the same VM
        c = Device(tmp_path / "c")
        w.sync(one, device=c)
        saved = (vdir / "snapshots/0000000001").read_bytes()
        shutil.copy(repo_dir / layout.vm_snapshot(c.id, vm, "0000000001"),
                    vdir / "snapshots/0000000001")
        with pytest.raises(RemoteIntegrityError, match="unknown key"):
            w.verify(vm)
        (vdir / "snapshots/0000000001").write_bytes(saved)

        # an old pointer served again (rollback) to the device that wrote a newer one
        old_latest = (vdir / "latest").read_bytes()
        w.sync(one)
        (vdir / "latest").write_bytes(old_latest)
        with pytest.raises(RemoteIntegrityError, match="older than seq 2"):
            w.sync(one)
        assert run(_noop()) is None


async def _noop() -> None:
    return None


def test_missing_chunk_is_named(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        dom = w.create("gone", data=[(0x81, 0, MIB)], start=False)
        w.sync(dom)
        vdir = w.repo_dir / layout.vm_dir(w.a.id, dom.name())
        for p in (vdir / "store" / "packs").rglob("*"):
            if p.is_file():
                p.unlink()
        with pytest.raises(RemoteIntegrityError, match="missing") as exc:
            w.verify(dom.name())
        assert exc.value.obj_type == "pack"
