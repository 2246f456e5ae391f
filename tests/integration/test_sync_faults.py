"""Crashes and a hostile server: QEMU killed, syncs killed, bytes flipped, objects swapped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from fixtures_s3 import SeaweedFS
from fixtures_sshd import Account, SSHServer, ssh_server
from kill_env import child_args, leftovers, phases, unindexed
from operator_env import Operator
from sync_env import MIB, Device, World, hmp_write, same_content, world

import testlib
from vmclient.store import crypto, layout
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.locks import Whoami, lock_document
from vmclient.store.remote import RemoteStore
from vmclient.store.transport import close_store
from vmclient.sync import maintenance, restore
from vmclient.sync.engine import CaptureLost, Hooks
from vmclient.transport import open_store
from vmclient.transport.localfs import LocalDirStore
from vmclient.transport.s3 import S3Store

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_power_save_during_a_sync_ends_its_job_and_the_next_sync_completes(
        tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("save", data=[(0x61, 0, 2 * MIB)], random_mib=16)
        saved: list[bool] = []
        loop = asyncio.get_running_loop()

        def power_saves(_done: int, _total: int) -> None:
            # powerd's managed save (lid closed, critical battery) while the sync reads
            if not saved:
                saved.append(True)
                asyncio.run_coroutine_threadsafe(
                    w.hv.managed_save(dom.UUIDString(), dom.name()), loop).result(60)
        with pytest.raises(CaptureLost, match=f"VM '{dom.name()}': its disks could not be read"):
            await w.sync(dom, hooks=Hooks(progress=power_saves))
        assert saved and not dom.isActive() and dom.hasManagedSaveImage(0)
        assert not list(w.remote.root.glob(f"devices/*/vms/{dom.name()}/snapshots/*"))
        again = await w.sync(dom)  # at rest now: the saved VM's disks
        assert (again.mode, again.seq) == ("at-rest", 1)
        await w.restore_b(dom.name(), tmp_path / "b" / "r.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r.qcow2")


async def test_qemu_killed_next_sync_reads_everything(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("crash", data=[(0x10, 0, 2 * MIB), (0x20, 20 * MIB, MIB)])
        assert (await w.sync(dom)).mode == "full"
        hmp_write(dom, f"write -P 0x30 {5 * MIB} {MIB}")
        assert (await w.sync(dom)).mode == "incremental"
        hmp_write(dom, f"write -P 0x40 {30 * MIB} 65536")
        kill_qemu(dom)
        dom.create()
        hmp_write(dom, f"write -P 0x50 {40 * MIB} 65536")
        after = await w.sync(dom)
        assert after.mode == "full" and after.fallback, after
        assert after.chunks_read == 32 + 16 + 16 + 1 + 1  # everything with data, re-read
        assert after.uploaded_chunks == 2  # compared by id: only 0x40 and 0x50 are new
        await w.restore_b(dom.name(), tmp_path / "b" / "r.qcow2")
        assert same_content(w.disk(dom.name()), tmp_path / "b" / "r.qcow2")
        hmp_write(dom, f"write -P 0x60 {50 * MIB} 65536")
        assert (await w.sync(dom)).mode == "incremental"  # bitmaps are usable again


@dataclass
class Over:
    """The repository a kill test syncs to: locally, over SFTP (a real sshd, the device's
    confined account) or on S3 (SeaweedFS, the device's own identity); ``root`` is its
    directory (None on S3), ``reader`` reads it there (on S3: the admin's store)."""

    name: str
    remote: RemoteStore
    root: Path | None
    reader: RemoteStore
    server: SSHServer | None = None
    account: Account | None = None
    s3: dict[str, str] | None = None

    def child(self, w: World, dom: object, kill_after: str | None = None) -> list[str]:
        return child_args(w, dom, kill_after=kill_after, server=self.server,
                          account=self.account, s3=self.s3)

    async def leftovers(self, w: World) -> list[str]:
        if self.root is not None:
            return leftovers(self.root, w.a.id)
        # S3: no temporaries; a killed upload of a large object is an incomplete
        # multipart upload (the admin's listing shows it)
        assert isinstance(self.reader, S3Store)
        objects = [e.path for e in await self.reader.list(layout.device_dir(w.a.id))
                   if e.path.endswith("/lock") or ".gone/" in e.path]
        ups = self.reader.client.list_multipart_uploads(
            Bucket=self.reader.target.bucket,
            Prefix=self.reader.target.key(layout.device_dir(w.a.id)) + "/")
        return sorted(objects + [u["Key"] for u in ups.get("Uploads", ())])

    async def plant(self, w: World, vm: str | None) -> None:
        """What a kill leaves (:func:`plant_temporaries`); on S3 (no temporary names; a
        pack is one PUT, under the multipart threshold) a lock set aside in
        ``lock.gone/`` (``vm`` "lock.gone") by the device's identity, else nothing
        (incomplete multipart uploads: test_s3_store.py)."""
        if self.root is not None:
            plant_temporaries(self.root, w.a.id, vm, self.account)
        elif vm == "lock.gone":
            await self.remote.put_atomic(f"{layout.device_lock(w.a.id)}.gone/0123456789abcdef",
                                         lock_document("killed", 0, "dead",
                                                       me=Whoami("h", "m", "b", 1)))

    async def verify(self, w: World, vm: str) -> maintenance.VerifyResult:
        return await maintenance.verify(self.reader, w.a.signers, w.keys[vm], device=w.a.id,
                                        vm=vm)


async def repository(stack: contextlib.AsyncExitStack, w: World, over: str,
               request: pytest.FixtureRequest | None = None) -> Over:
    if over == "local":
        return Over(over, w.remote, w.repo_dir, w.remote)
    if over == "s3":
        assert request is not None
        s3: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix = s3.prefix()
        creds = s3.credentials_file(await s3.issue(prefix, w.a.id), w.tmp / "s3-credentials")
        device = open_store(s3.url(prefix), s3_credentials=creds)
        admin = s3.store(s3.admin, prefix)
        stack.push_async_callback(close_store, device)
        stack.push_async_callback(close_store, admin)
        return Over(over, device, None, admin,
                    s3={"url": s3.url(prefix), "credentials": str(creds)})
    server = stack.enter_context(ssh_server())
    account = server.add_device(w.a.id)
    remote = server.store(account)
    stack.push_async_callback(close_store, remote)
    return Over(over, remote, server.repo, LocalDirStore(server.repo), server, account)


def kill_after(argv: list[str], phase: str, delay: float) -> tuple[int, str]:
    """Run a sync child, SIGKILL it ``delay`` seconds after it logged ``phase``; (its exit
    status, its stderr)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = until_phase(proc, phase)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    _out, rest = proc.communicate()
    return proc.returncode, err + rest


def kill_qemu(dom: libvirt.virDomain) -> None:
    """SIGKILL the VM's QEMU (a crash: its checkpoints are lost) and wait until it is gone."""
    os.kill(int(Path(f"/run/libvirt/qemu/{dom.name()}.pid").read_text()), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while dom.isActive() and time.monotonic() < deadline:
        time.sleep(0.05)


def until_phase(proc: subprocess.Popen[str], phase: str) -> str:
    """The child's stderr up to its first ``phase <phase>`` line (or its end)."""
    assert proc.stderr is not None
    err = ""
    for line in proc.stderr:
        err += line
        if line.startswith(f"phase {phase} "):
            break
    return err


def locked_span(args: list[str]) -> float:
    """Seconds from the lock taken to the end of one sync in a process."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = until_phase(proc, "lock")
    locked = time.monotonic()
    _out, rest = proc.communicate()
    assert proc.returncode == 0, err + rest
    return time.monotonic() - locked


# kills the random test aims at per repository (VMCLIENT_KILL_ROUNDS: more, for a long run);
# on S3 fewer by default (each sync child takes ~2 s to start boto3 there; the kill after
# each write step runs there too)
KILLS = int(os.environ.get("VMCLIENT_KILL_ROUNDS") or 6)
KILLS_S3 = int(os.environ.get("VMCLIENT_KILL_ROUNDS") or 3)


@pytest.mark.parametrize("over", ["local", "sftp", "s3"])
async def test_sync_killed_at_random_points(tmp_path: Path, over: str,
                                            request: pytest.FixtureRequest) -> None:
    """Syncs SIGKILLed at random moments, a random delay after a random write step (the
    seed is printed; VMCLIENT_KILL_SEED repeats the choices, not the timing; the write
    steps each killed sync completed are logged):
    the repository is whole after every kill, and the next complete sync leaves no
    temporary file, lock or unindexed pack."""
    async with contextlib.AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(tmp_path))
        r = await repository(stack, w, over, request)
        dom = w.create("kill", random_mib=8, data=[(0x61, 0, MIB)])
        seed = int(os.environ.get("VMCLIENT_KILL_SEED") or int.from_bytes(os.urandom(4)))
        print(f"{over}: random kills: seed {seed} (VMCLIENT_KILL_SEED={seed} repeats the "
              "choices)")
        rng = random.Random(seed)
        full = testlib.run(r.child(w, dom), check=True, timeout=300)
        assert '"seq": 1' in full.stdout
        hmp_write(dom, "write -P 0x62 0 65536")
        span = locked_span(r.child(w, dom))  # an incremental sync: lock taken → process end
        seqs, kills, hit = [2], 0, []
        aim = KILLS_S3 if over == "s3" else KILLS
        for rep in range(6 * aim):  # (a sync may end before its kill: a slow reader here)
            if kills >= aim:
                break
            for n in range(16):  # this round's changes
                hmp_write(dom, f"write -P {rep * 16 + n:#x} {rng.randrange(1024) * 65536} 65536")
            # a random moment after a random write step: while it reads and uploads (after
            # the lock), or inside the step after another one (mid-put, mid-unlock)
            after = rng.choice(("lock", "lock", "pack", "index", "snapshot", "latest"))
            delay = rng.uniform(0, span if after == "lock" else 0.05)
            returncode, err = kill_after(r.child(w, dom), after, delay)
            assert returncode in (0, -signal.SIGKILL), err  # killed, or it had finished
            kills += returncode == -signal.SIGKILL
            done = phases(err)  # the write steps completed before the kill
            hit.append(f"{'after ' + done[-1] if done else 'before the lock'}"
                       f"{'' if returncode else ' (it had finished)'}")
            print(f"{over}: seed {seed} round {rep}: killed {delay * 1000:.1f} ms after "
                  f"{after}: {hit[-1]}")
            latest = await r.verify(w, dom.name())  # the repository is whole after every kill
            assert latest.seq >= seqs[-1]
            seqs.append(latest.seq)
        assert kills >= aim, f"only {kills} of {len(hit)} syncs were killed before they " \
            f"ended: {hit}"
        final = await w.sync(dom, remote=r.remote)
        assert final.seq > seqs[-1]
        assert await r.leftovers(w) == []  # swept by the locked run, unlocked
        assert await unindexed(r.reader, w, dom.name()) == ({}, {})  # adopted by its index
        assert (await r.verify(w, dom.name())).seq == final.seq
        dest = tmp_path / "k.qcow2"
        await restore.restore_vm(r.reader, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                 vm=dom.name(), dest={"vda": dest})
        assert same_content(w.disk(dom.name()), dest)


async def test_sync_killed_while_writing_its_lock_leaves_no_temporary(tmp_path: Path) -> None:
    """SIGKILL inside the lock's write, its temporary file written and not yet linked
    (the random kills hit this about once in three runs): the next sync removes that
    temporary, and only the lock's: a half-written ``device`` record of the admin's
    beside it is not the sync's to remove."""
    async with world(tmp_path) as w:
        dom = w.create("lockkill", data=[(0x61, 0, MIB)], start=False)
        r = testlib.run(child_args(w, dom, kill_after="lock-temporary"), timeout=300)
        assert r.returncode == -signal.SIGKILL and phases(r.stderr) == ["lock-temporary"], \
            r.stderr
        dev_dir = w.repo_dir / layout.device_dir(w.a.id)
        assert len(list(dev_dir.glob(".tmp-*"))) == 1 and not (dev_dir / "lock").exists()
        admins = dev_dir / ".tmp-device-0123456789abcdef"
        admins.write_bytes(b"half a device record")
        assert (await w.sync(dom)).seq == 1
        assert sorted(p.name for p in dev_dir.glob(".tmp-*")) == [admins.name]
        admins.unlink()
        assert leftovers(w.repo_dir, w.a.id) == []


async def test_sync_killed_while_unlocking_leaves_no_lock_set_aside(tmp_path: Path) -> None:
    """SIGKILL inside the unlock's compare-and-delete, the lock set aside under another
    name and not yet deleted: the next sync removes what was set aside (and breaks the
    dead process's lock)."""
    async with world(tmp_path) as w:
        dom = w.create("unlockkill", data=[(0x61, 0, MIB)], start=False)
        r = testlib.run(child_args(w, dom, kill_after="unlock-aside"), timeout=300)
        assert r.returncode == -signal.SIGKILL and phases(r.stderr)[-2:] == [
            "latest", "unlock-aside"], r.stderr
        assert leftovers(w.repo_dir, w.a.id) != []
        assert (await w.sync(dom)).seq == 2
        assert leftovers(w.repo_dir, w.a.id) == []


def plant_temporaries(root: Path, device: str, vm: str | None, account: Account | None
                      ) -> None:
    """Half-written uploads (``.tmp-*``) in the VM's pack directory and VM directory (no
    ``vm``: the device lock's temporary beside it; ``vm`` "lock.gone": a lock set aside
    by an unlock cut short), owned by the device's account as its killed uploads are."""
    if vm is None:
        tmps = [root / layout.device_dir(device) / ".tmp-lock-0123456789abcdef"]
    elif vm == "lock.gone":  # a lock set aside by a client killed while unlocking
        aside = root / layout.device_dir(device) / "lock.gone"
        aside.mkdir(exist_ok=True)
        tmps = [aside, aside / "0123456789abcdef"]
    else:
        vm_dir = root / layout.vm_dir(device, vm)
        pack_dir = next(p for p in (vm_dir / "store" / "packs").iterdir() if p.is_dir())
        tmps = [d / ".tmp-killedupload" for d in (pack_dir, vm_dir, vm_dir / "snapshots")]
    for tmp in tmps:
        if not tmp.is_dir():
            tmp.write_bytes(os.urandom(4096))
        if account is not None:
            pw = pwd.getpwnam(account.user)
            os.chown(tmp, pw.pw_uid, pw.pw_gid)


KILL_STEPS = ("keys", "lock", "pack", "index", "snapshot", "latest")  # keys: the first sync's


@pytest.mark.parametrize("over", ["local", "sftp", "s3"])
async def test_sync_killed_after_each_write_step_leaves_nothing_behind(
        tmp_path: Path, over: str, request: pytest.FixtureRequest) -> None:
    """SIGKILL right after each write step (as orders_crash_driver.py does for a wipe);
    the next sync completes, leaves no temporary file, lock or unindexed pack, and the
    repository verifies."""
    async with contextlib.AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(tmp_path))
        r = await repository(stack, w, over, request)
        remote = r.remote
        dom = w.create("step", random_mib=24, data=[(0x61, 0, MIB)])
        for i, step in enumerate(KILL_STEPS):
            hmp_write(dom, f"write -P {0x40 + i:#x} {i * MIB} 65536")
            p = testlib.run(r.child(w, dom, kill_after=step), timeout=300)
            done = phases(p.stderr)
            print(f"{over}: killed after {step}; steps done: {' '.join(done)}")
            assert p.returncode == -signal.SIGKILL and done[-1:] == [step], p.stderr
            if step == "pack":  # what a kill in the middle of uploads leaves as well
                await r.plant(w, dom.name())
            if step == "lock":  # and one inside the lock's write (locally: killed there in
                await r.plant(w, None)  # the tests before this)
            if step == "latest":  # and inside the unlock, the lock set aside
                await r.plant(w, "lock.gone")
                assert await r.leftovers(w) != []
            after = await w.sync(dom, remote=remote)
            assert await r.leftovers(w) == [], step
            assert await unindexed(remote, w, dom.name()) == ({}, {}), step
            v = await maintenance.verify(remote, w.a.signers, w.keys[dom.name()],
                                         device=w.a.id, vm=dom.name())
            assert v.seq == after.seq, step
        dest = tmp_path / "r.qcow2"
        await restore.restore_vm(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                 vm=dom.name(), dest={"vda": dest})
        assert same_content(w.disk(dom.name()), dest)


@pytest.mark.parametrize("over", ["local", "s3"])  # (SFTP: test_sftp_store.py's tampered pack)
async def test_flipped_bytes_and_substituted_objects_are_refused(
        tmp_path: Path, over: str, request: pytest.FixtureRequest) -> None:
    """A byte flipped in each kind of object, another VM's or device's signed object
    put in place of one, an old pointer served again: each is refused by verify and
    restore, naming the object, and no disk is restored; the repository is whole again
    once the bytes are put back (the operator changed them: nothing was lost)."""
    async with contextlib.AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(tmp_path))
        r = await repository(stack, w, over, request)
        op = Operator(r.root, r.reader if isinstance(r.reader, S3Store) else None)
        w.remote = r.remote  # verify and restore read through the device's transport
        one = w.create("one", data=[(0x71, 0, 2 * MIB)], start=False)
        two = w.create("two", data=[(0x72, 0, MIB)], start=False)
        await w.sync(one)
        await w.sync(two)
        vm = one.name()
        vdir = layout.vm_dir(w.a.id, vm)
        store = layout.vm_store(w.a.id, vm)
        targets = {
            "chunk": ((await r.reader.list(f"{store}/packs"))[0].path, 20),  # in the
            # first blob (the header is not read: indexed)
            "index": ((await r.reader.list(f"{store}/index"))[0].path, 40),
            "snapshot": (layout.vm_snapshot(w.a.id, vm, layout.snapshot_name(1)), 120),
            "pointer": (layout.vm_pointer(w.a.id, vm), 100),
        }
        for obj_type, (path, pos) in targets.items():
            original = op.flip(path, pos)
            with pytest.raises(RemoteIntegrityError) as exc:
                await w.verify(vm)
            assert exc.value.obj_type == obj_type and path in str(exc.value), exc.value
            with pytest.raises(RemoteIntegrityError):
                await w.restore_b(vm, tmp_path / "b" / f"{obj_type}.qcow2")
            assert not (tmp_path / "b" / f"{obj_type}.qcow2").exists()
            op.write(path, original)
        key = layout.vm_key(w.a.id, vm, crypto.key_id(w.escrow.public_key()))
        original = op.flip(key, 150)
        with pytest.raises(RemoteIntegrityError, match="wrapped-key"):
            await w.keys_for_b(vm)
        op.write(key, original)
        await w.verify(vm)

        # another VM's snapshot and pointer, put in place of this VM's
        other = layout.vm_dir(w.a.id, two.name())
        for name in ("snapshots/0000000001", "latest"):
            saved = op.read(f"{vdir}/{name}")
            op.write(f"{vdir}/{name}", op.read(f"{other}/{name}"))
            with pytest.raises(RemoteIntegrityError, match="bad signature"):
                await w.verify(vm)
            op.write(f"{vdir}/{name}", saved)

        # another device's snapshot of the same VM (written where that device may write)
        c = Device(tmp_path / "c")
        await w.sync(one, device=c, remote=r.reader)
        snap = layout.vm_snapshot(w.a.id, vm, "0000000001")
        saved = op.read(snap)
        op.write(snap, op.read(layout.vm_snapshot(c.id, vm, "0000000001")))
        with pytest.raises(RemoteIntegrityError, match="unknown key"):
            await w.verify(vm)
        op.write(snap, saved)

        # an old pointer served again (rollback) to the device that wrote a newer one
        old_latest = op.read(layout.vm_pointer(w.a.id, vm))
        await w.sync(one)
        op.write(layout.vm_pointer(w.a.id, vm), old_latest)
        with pytest.raises(RemoteIntegrityError, match="older than seq 2"):
            await w.sync(one)
        assert await _noop() is None


async def _noop() -> None:
    return None


async def test_missing_chunk_is_named(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("gone", data=[(0x81, 0, MIB)], start=False)
        await w.sync(dom)
        vdir = w.repo_dir / layout.vm_dir(w.a.id, dom.name())
        for p in (vdir / "store" / "packs").rglob("*"):
            if p.is_file():
                p.unlink()
        with pytest.raises(RemoteIntegrityError, match="missing") as exc:
            await w.verify(dom.name())
        assert exc.value.obj_type == "pack"
