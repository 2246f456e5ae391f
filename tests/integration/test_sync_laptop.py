# ruff: noqa: ASYNC240  (blocking checks in tests are fine)
"""LUKS business VMs from provisioning: sync on laptop A, ``vm restore`` on laptop B.

Device B is a second provisioning set-up (its own state dir, device keys, images,
staging and management dirs) on the same libvirtd; the admin re-keys the VM for
B with ``manage.rekey.rekey`` (what ``vmclient-admin rekey`` runs) from the
escrow copy A's syncs wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mmap
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import libvirt
import libvirt_qemu
import pytest
from fixtures_bus import PrivateSystemBus
from fixtures_virt import IMAGES, URI, scaled
from provision_env import (
    Env,
    assert_no_vm,
    image_bytes,
    need_tools,
    provision_env,
    set_lease,
    write_config,
)

from testlib import SERVICES, run, vmclientctl
from vmclient.host.assigned import accepted_min_seq
from vmclient.host.inventory import ManageConfig
from vmclient.host.keys import DeviceKeys
from vmclient.manage import rekey
from vmclient.provision.domainxml import VM_NS
from vmclient.provision.installer import Provisioner
from vmclient.provision.progress import Progress
from vmclient.provision.receiver import Receiver
from vmclient.provision.restore import RestoreError
from vmclient.provision.restore import restore as restore_vm
from vmclient.store import crypto, layout
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.documents import Pointer
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.orders import DeviceRecord, Order
from vmclient.store.repo import get_snapshot, load_snapshot, put_pointer, put_signed, put_snapshot
from vmclient.sync import engine, restore

pytestmark = pytest.mark.asyncio(loop_scope="session")
MARKER = b"VMCLIENT-LUKS-SYNC-MARKER-51e0c7"
MIB = 1 << 20
PLAIN = b"\x5c" * 4096  # what the guest writes; ciphertext never holds such a run


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools("qemu-nbd")


class Laptops:
    def __init__(self, env: Env, tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.a = env.provisioner()
        dev_b = DeviceKeys.load_or_create(tmp / "b-device")
        cfg_b = replace(env.cfg, state_dir=tmp / "b-state", device_dir=tmp / "b-device",
                        images_dir=IMAGES / f"{env.prefix}-b", manage_dir=tmp / "b-manage",
                        staging_dir=Path("/dev/shm") / f"{env.prefix}-b")
        set_lease(cfg_b.manage_dir, days=14)  # laptop B is enrolled: its VMs may run
        self.escrow = crypto.X25519PrivateKey.generate()  # IT's, offline
        self.b_cfg, self.b_dev = cfg_b, dev_b
        self.b = Provisioner(cfg_b, env.hv, dev_b,
                             Receiver(env.dc.store, env.dc.pinned, dev_b, cfg_b.state_dir,
                                      retry_delay=0.01))
        self.scratch = IMAGES / f"{env.prefix}-scratch"
        self.memory_dir = Path("/dev/shm") / f"{env.prefix}-mem"

    async def install(self, suffix: str, *, memory: bool) -> str:
        await self.env.dc.publish(f"{self.env.prefix}-img", image_bytes(40, MARKER))
        path = self.env.recipe(self.tmp, suffix)
        path.write_text(path.read_text() + "\n[sync]\nenabled = true\nmemory = "
                        + ("true" if memory else "false") + "\n")
        vm = await self.a.install(path)
        return vm.name

    async def sync(self, name: str, hooks: engine.Hooks | None = None) -> engine.SyncResult:
        vm = await self.a.get(name)
        return await engine.sync_vm(self.env.hv, self.env.dc.store, engine.SyncJob(
            vm.uuid, self.env.device.signing(), self.a.keys.load(name),
            state_dir=self.tmp / "a-sync", scratch_dir=self.scratch,
            recipients=[self.env.device.wrapping().public_key(), self.escrow.public_key()],
            memory_dir=self.memory_dir,
            meta={"recipe": (self.env.cfg.state_dir / "vms" / name / "recipe.toml").read_text()}),
            hooks)

    def record(self, keys: DeviceKeys, name: str) -> DeviceRecord:
        return DeviceRecord(keys.device_id(), name, crypto.raw_public(keys.signing().public_key()),
                            crypto.raw_public(keys.wrapping().public_key()), 0)

    async def rekey_for_b(self, name: str) -> rekey.RekeyResult:
        """``vmclient-admin rekey <vm> --to B``: the admin's own code (manage.rekey)."""
        store, admin = self.env.dc.store, self.env.dc.admin
        a, b = self.record(self.env.device, "laptop-a"), self.record(self.b_dev, "laptop-b")
        for rec in (a, b):  # enrolled: their admin-signed device records
            await put_signed(store, layout.device_record(rec.device), admin,
                             ("device", rec.device), rec.to_bytes(), exclusive=False)
        return await rekey.rekey(store, admin, self.escrow, name, a, b)

    async def accept_on_b(self, name: str, result: rekey.RekeyResult) -> None:
        """B's agent executes the ``rekey`` order (``min_seq`` = what the admin verified):
        the data key where provisioning keeps it, the order in ``rekeyed.json``."""
        cfg = ManageConfig(state_dir=self.b_cfg.manage_dir,
                           vm_keys_dir=self.b_cfg.state_dir / "keys",
                           images_dir=self.b_cfg.images_dir, device_dir=self.b_cfg.device_dir)
        order = Order(self.b_dev.device_id(), 1, 0, "rekey",
                      {"vm": name, "from_device": result.source, "min_seq": result.seq})
        await rekey.accept(self.env.dc.store, self.env.dc.admin.public_key(), cfg,
                           self.b_dev.device_id(), self.b_dev.wrapping(), order)

    def lose_a(self, name: str) -> None:
        """Laptop A is gone: its domain with it (its disk files stay, for comparison)."""
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        finally:
            conn.close()

    def lose_networks(self) -> None:
        """No vmclient network defined: a laptop where nothing was installed yet."""
        conn = libvirt.open(URI)
        try:
            for zone in self.env.cfg.networks.zones().values():
                with contextlib.suppress(libvirt.libvirtError):
                    net = conn.networkLookupByName(zone.network)
                    with contextlib.suppress(libvirt.libvirtError):
                        net.destroy()
                    net.undefine()
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def laptops(tmp: Path) -> AsyncIterator[Laptops]:
    async with provision_env(tmp) as env:
        lt = Laptops(env, tmp)
        try:
            yield lt
        finally:
            for d in (lt.scratch, lt.memory_dir, lt.b_cfg.images_dir, lt.b_cfg.staging_dir):
                shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def provd(config: Path, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``vmclient-provd`` with ``config`` on the bus of ``env``, until the block ends."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vmclient.provision.daemon", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while vmclientctl("vm", "list", env=env).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def hmp(dom: libvirt.virDomain, disk: int, cmd: str) -> None:
    for c in (cmd, "flush"):
        out = libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d /machine/peripheral/virtio-disk{disk}/virtio-backend "{c}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        assert not out.strip(), out


def luks_identical(a: Path, b: Path, pp: bytes) -> bool:
    """``qemu-img compare`` of two LUKS qcow2 disks under the same passphrase."""
    secret = Path("/dev/shm") / f"vmct-pp-{a.parent.name}"
    secret.write_bytes(pp)
    try:
        opts = [f"driver=qcow2,file.filename={p},encrypt.key-secret=s0" for p in (a, b)]
        r = run(["qemu-img", "compare", "-U", "--object", f"secret,id=s0,file={secret}",
                 "--image-opts", *opts])
    finally:
        secret.unlink()
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


@contextlib.asynccontextmanager
async def tampered_memory_chunk(lt: Laptops, name: str) -> AsyncIterator[bytes]:
    """A byte flipped in a chunk only the latest snapshot's memory image has, in B's copy
    of the store (after :meth:`Laptops.rekey_for_b`), until the block ends; its id."""
    keys = lt.a.keys.load(name)
    b_id, a_id = lt.b_dev.device_id(), lt.env.device.device_id()
    signers = {a_id: lt.env.device.signing().public_key()}
    m = await load_snapshot(lt.env.dc.store, signers, keys, b_id, name)
    disk_ids = set().union(*(d.stored_ids() for d in m.disks if d.role != "memory"))
    memory = next(d for d in m.disks if d.role == "memory")
    cid = sorted(memory.stored_ids() - disk_ids)[0]
    store = ChunkStore(lt.env.dc.store, layout.vm_store(b_id, name), keys)
    ref = (await store.load_index())[cid]
    pack = lt.env.dc.root / layout.pack(store.root, ref.pack)
    good = pack.read_bytes()
    raw = bytearray(good)
    raw[ref.offset + ref.length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    try:
        yield cid
    finally:
        pack.write_bytes(good)


def assert_not_restored(lt: Laptops, name: str) -> None:
    """Laptop B has neither a domain nor disks of ``name``."""
    assert_no_vm(lt.b_cfg.images_dir, name)


def read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        return os.pread(f.fileno(), length, offset)


def read_direct(path: Path) -> bytes:
    """The file as it is on disk (O_DIRECT): a buffered read racing QEMU's direct
    writes could keep a stale page in the cache and fool this check and QEMU's."""
    buf = mmap.mmap(-1, 1 << 20)
    out = bytearray()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        while n := os.readv(fd, [buf]):
            out += buf[:n]
            if n < len(buf):
                break
    finally:
        os.close(fd)
    return bytes(out)


# the kernel stamps a write with a coarse clock (a tick behind): a file whose mtime is
# this close to when its last read began may have been written since, unseen
SETTLE = 0.1


@contextlib.contextmanager
def in_thread(look: Callable[[], None], stop: threading.Event) -> Iterator[None]:
    """``look`` runs in a thread while the block runs; ``stop`` set ends it (waited for)."""
    t = threading.Thread(target=look, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@contextlib.contextmanager
def watch_plaintext(directory: Path) -> Iterator[dict[str, set[str]]]:
    """Look at every file that appears in ``directory`` while the block runs, and again
    whenever it may have changed since it was last read (its inode, size or times moved,
    or it was modified less than ``SETTLE`` s before that read began)."""
    seen: dict[str, set[str]] = {"files": set(), "plaintext": set()}
    last: dict[Path, tuple[tuple[int, int, int, int], float]] = {}  # stat, read began
    stop = threading.Event()

    def unread(f: Path, st: os.stat_result) -> bool:
        sig, began = last.get(f, (None, 0.0))
        return sig != (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) \
            or st.st_mtime_ns / 1e9 >= began - SETTLE

    def look() -> None:
        while not stop.is_set():
            try:
                files = list(directory.rglob("*")) if directory.exists() else []
            except OSError:  # a directory went away during the walk: the next round
                files = []
            for f in files:
                with contextlib.suppress(OSError):
                    st = f.stat()
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    seen["files"].add(f.name)
                    if unread(f, st):
                        began = time.time()
                        if PLAIN in read_direct(f):
                            seen["plaintext"].add(f.name)
                        last[f] = ((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                                   began)
            stop.wait(0.01)

    with in_thread(look, stop):
        yield seen


@contextlib.contextmanager
def state_when_files_appear(directory: Path, name: str) -> Iterator[list[int]]:
    """Domain ``name``'s state the moment the first file appears in ``directory``."""
    seen: list[int] = []
    stop = threading.Event()

    def look() -> None:
        conn = libvirt.open(URI)
        try:
            while not stop.is_set() and not seen:
                with contextlib.suppress(OSError):
                    if directory.exists() and any(
                            f.is_file() for f in directory.rglob("*")):
                        seen.append(conn.lookupByName(name).state()[0])
                stop.wait(0.01)
        finally:
            conn.close()

    with in_thread(look, stop):
        yield seen


async def test_the_plaintext_watch_sees_a_file_written_after_it_was_read(tmp_path: Path) -> None:
    """What the memory test's scratch checks rest on: a file the watch has read, clean,
    is read again once it changes (at once, and after a quiet moment)."""
    for pause in (0.0, 0.2):
        with watch_plaintext(tmp_path) as seen:
            fd = os.open(tmp_path / f"s{pause}", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                os.pwrite(fd, bytes(MIB), 0)
                deadline = time.monotonic() + 10
                while f"s{pause}" not in seen["files"] and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
                await asyncio.sleep(pause + 0.05)  # read, clean
                os.pwrite(fd, PLAIN, 8192)  # same size; maybe the same mtime tick
            finally:
                os.close(fd)
            await asyncio.sleep(0.3)
        assert seen == {"files": {f"s{pause}"}, "plaintext": {f"s{pause}"}}
        (tmp_path / f"s{pause}").unlink()


async def test_luks_vm_with_memory_restored_running_on_laptop_b(tmp_path: Path) -> None:
    """A's running LUKS VM synced with its memory (full, then incremental) is restored
    running on B.  First, with a byte of a chunk only the memory image has flipped in
    B's copy on the server, B's restore names that chunk and defines nothing; once the
    server is repaired the restore resumes, fetching only what it lacks."""
    async with laptops(tmp_path) as lt:
        name = await lt.install("mem", memory=True)
        await lt.a.start(name)
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(name)
            hmp(dom, 1, f"write -P 0x5c {MIB} 65536")  # plaintext the full backup reads
            overwritten: list[int] = []

            def overwrite(_done: int, _total: int) -> None:
                # the guest overwrites it while the job runs, before it is read: QEMU
                # copies the old cluster into the scratch file first (copy-before-write)
                if not overwritten:
                    hmp(dom, 1, f"write -P 0x21 {MIB} 65536")
                    overwritten.append(1)
            with watch_plaintext(lt.scratch) as first_seen, \
                    state_when_files_appear(lt.scratch, name) as made_while:
                first = await lt.sync(name, engine.Hooks(progress=overwrite))
            # the LUKS scratch files (seconds of qemu-img's PBKDF calibration) are made
            # while the VM still runs: not in the downtime of its memory point
            assert made_while == [libvirt.VIR_DOMAIN_RUNNING], \
                f"the scratch files appeared with the VM in state {made_while}, not running"
            assert (first.mode, first.seq) == ("full", 1) and first.memory_bytes > 0
            assert overwritten
            hmp(dom, 1, f"write -P 0x5c {2 * MIB} {256 * 1024}")  # changed since sync 1
            pp = lt.a.keys.load(name).passphrase()
            with watch_plaintext(lt.scratch) as seen:
                second = await lt.sync(name)
            assert second.mode == "incremental"
            assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        finally:
            dom = None  # it holds the connection (and libvirt's event handles) open
            conn.close()
        # the scratch files of both jobs were in the scratch dir, LUKS-encrypted (the
        # engine checks): the plaintext the guest wrote, and QEMU copied there when the
        # guest overwrote it during the first job, never was
        assert {f.split("-")[0] for f in first_seen["files"]} == {"vda", "vdb"}
        assert {f.split("-")[0] for f in seen["files"]} == {"vda", "vdb"}
        assert first_seen["plaintext"] == set() and seen["plaintext"] == set()
        assert not lt.scratch.exists() or not any(lt.scratch.rglob("*"))
        assert not any(lt.memory_dir.iterdir())

        a_disks = {k: Path(v) for k, v in (await lt.a.get(name)).disks.items()}
        lt.lose_a(name)
        await lt.rekey_for_b(name)
        events: list[str] = []
        totals: list[int] = []  # the download's total, each time it is reported

        def report(p: Progress) -> None:
            events.append(p.phase)
            if p.phase == "download":
                totals.append(p.total)
        lt.b.report = report

        # the tampered memory chunk: named, nothing defined, no key kept
        async with tampered_memory_chunk(lt, name) as cid:
            with pytest.raises(RemoteIntegrityError, match=cid.hex()):
                await restore_vm(lt.b, name, from_device=lt.env.device.device_id())
            assert_not_restored(lt, name)
            assert not lt.b.keys.exists(name), "a key kept after the tampered chunk"
            first_total = totals[-1]
        # the server is repaired: the next restore resumes, fetching only what it lacks
        events.clear()
        totals.clear()
        vm = await restore_vm(lt.b, name, from_device=lt.env.device.device_id())
        assert 0 < totals[-1] < first_total, ("the restore after the repair fetched "
                                              f"{totals} of {first_total} bytes")
        assert not (lt.b_cfg.state_dir / "cache" / f".vm-{name}").exists()  # cleared
        assert {"download", "assemble", "define"} <= set(events)
        conn = libvirt.open(URI)
        try:
            state, reason = conn.lookupByName(name).state()
        finally:
            conn.close()
        assert (state, reason) == (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_RESTORED)
        assert vm.state == "running"
        assert not any((lt.b_cfg.staging_dir).glob("*.save"))  # the RAM image is gone
        for disk, path in vm.disks.items():
            assert Path(path).parent == lt.b_cfg.images_dir / name
            info = run(["qemu-img", "info", "-U", path]).stdout
            assert "encrypted: yes" in info
            assert luks_identical(a_disks[disk], Path(path), pp), disk
        assert PLAIN not in Path(vm.disks["data"]).read_bytes()
        assert lt.b.keys.load(name).secret == lt.a.keys.load(name).secret

        # the memory blob B restored is byte-identical to A's image (its SHA-256,
        # taken on A from the saved file, is checked by the restore; here again)
        keys = lt.b.keys.load(name)
        b_id = lt.b_dev.device_id()
        signers = {lt.env.device.device_id(): lt.env.device.signing().public_key()}
        # snapshot 1 is the point in time its job began: the cluster as it was before
        # the guest overwrote it during the read
        await restore.restore_vm(lt.env.dc.store, signers, keys, device=b_id, vm=name,
                                 dest={"vda": tmp_path / "1-vda.raw", "vdb": tmp_path / "1.raw"},
                                 snapshot=layout.snapshot_name(1), fmt="raw")
        assert read_at(tmp_path / "1.raw", MIB, 65536) == b"\x5c" * 65536
        mem = tmp_path / "mem.save"
        m = await load_snapshot(lt.env.dc.store, signers, keys, b_id, name)
        await restore.restore_vm(lt.env.dc.store, signers, keys, device=b_id, vm=name,
                                 dest={"vda": tmp_path / "vda.raw", "vdb": tmp_path / "vdb.raw",
                                       "memory": mem}, fmt="raw")
        assert hashlib.sha256(mem.read_bytes()).hexdigest() == m.meta["memory_sha256"] \
            == second.memory_sha256


async def test_luks_vm_at_rest_restores_and_starts_on_b(system_bus: PrivateSystemBus,
                                                       tmp_path: Path) -> None:
    async with laptops(tmp_path) as lt:
        name = await lt.install("rest", memory=False)
        with watch_plaintext(lt.scratch) as seen:
            r = await lt.sync(name)  # stopped: read at rest, through qemu-nbd
        assert (r.mode, r.memory_bytes) == ("at-rest", 0)
        assert seen["files"] == set()  # nothing was copied out at all
        a_disks = {k: Path(v) for k, v in (await lt.a.get(name)).disks.items()}
        pp = lt.a.keys.load(name).passphrase()
        lt.lose_a(name)
        lt.lose_networks()  # B is a fresh laptop: its first VM is this restored one
        await lt.rekey_for_b(name)
        # as on the laptop: vmclientctl vm restore <vm> --from <device>, through B's
        # vmclient-provd on the system bus (D-Bus Provisioning.Restore)
        (tmp_path / "b").mkdir()
        config = write_config(replace(lt.env, cfg=lt.b_cfg), tmp_path / "b")
        env = {**system_bus.env(), "PYTHONPATH": str(SERVICES / "src")}
        with provd(config, env, tmp_path / "provd.log"):
            # (in a thread: this loop answers libvirtd's keepalives meanwhile, or a
            # restore longer than their timeout on a loaded machine drops its connection)
            r = await asyncio.to_thread(vmclientctl, "vm", "restore", name, "--from",
                                        lt.env.device.device_id(), env=env,
                                        timeout=scaled(240))
        assert r.returncode == 0, r.stderr
        assert f"VM {name} restored from snapshot 0000000001" in \
            (tmp_path / "provd.log").read_text()  # by the daemon, not in the CLI
        assert f"{name}: business VM, shutoff" in r.stdout
        assert "assemble" in r.stderr  # the progress lines
        vm = await lt.b.get(name)
        assert vm.state == "shutoff"  # no memory: defined, not started
        for disk, path in vm.disks.items():
            assert luks_identical(a_disks[disk], Path(path), pp), disk
        assert (lt.b_cfg.state_dir / "vms" / name / "recipe.toml").exists()
        await lt.b.start(name)  # B's own wrapped key opens the disks
        assert (await lt.b.get(name)).state == "running"


async def test_definition_planted_by_a_rooted_laptop_is_not_restored(tmp_path: Path) -> None:
    """Laptop A, stolen and rooted, syncs once more before IT revokes it: a snapshot signed
    with its valid device key whose domain XML carries a host PCI device, a disk reading a
    host file, QEMU arguments and ``kind="private"`` (no lease).  IT's restore onto B
    defines the VM from its recipe: none of it arrives; a recipe saying ``private`` is
    refused outright (issue 13, security point 2).

    And after the rekey order (min_seq = the ``latest`` IT verified), a server that hands
    B an older, validly signed ``latest`` from an earlier sync is refused, nothing
    defined, the key the agent accepted untouched."""
    async with laptops(tmp_path) as lt:
        name = await lt.install("plant", memory=False)
        assert (await lt.sync(name)).seq == 1  # at rest
        a_id, store = lt.env.device.device_id(), lt.env.dc.store
        b_id = lt.b_dev.device_id()
        old_latest = await store.get(layout.vm_pointer(a_id, name))  # sync 1's
        keys = lt.a.keys.load(name)
        signers = {a_id: lt.env.device.signing().public_key()}
        genuine = await get_snapshot(store, signers, keys, device=a_id, vm=name,
                                     snapshot=layout.snapshot_name(1))
        mac = ET.fromstring(genuine.meta["domain"]).find("devices/interface/mac")
        assert mac is not None  # libvirt gave A's NIC a MAC: B keeps it
        secret_file = tmp_path / "host-secret.key"
        secret_file.write_bytes(b"host secret")
        secret_file.chmod(0o600)
        root = ET.fromstring(genuine.meta["domain"])
        devices = root.find("devices")
        assert devices is not None
        hostdev = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="no")
        ET.SubElement(ET.SubElement(hostdev, "source"), "address", domain="0x0000",
                      bus="0x00", slot="0x1f", function="0x3")
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", file=str(secret_file))
        ET.SubElement(disk, "target", dev="vdz", bus="virtio")
        qemu = "http://libvirt.org/schemas/domain/qemu/1.0"
        cmd = ET.SubElement(root, f"{{{qemu}}}commandline")
        for arg in ("-fw_cfg", f"name=opt/k,file={secret_file}"):
            ET.SubElement(cmd, f"{{{qemu}}}arg", value=arg)
        root.find(f"metadata/{{{VM_NS}}}vm").set("kind", "private")  # type: ignore[union-attr]
        planted = ET.tostring(root, encoding="unicode")

        async def sync_planted(seq: int, **meta: str) -> None:
            """The rooted laptop's own signed snapshot and ``latest`` (its device key)."""
            m = replace(genuine, label=layout.snapshot_name(seq), seq=seq,
                        parent=layout.snapshot_name(seq - 1), meta={**genuine.meta, **meta})
            digest = await put_snapshot(store, lt.env.device.signing(), keys, m)
            await put_pointer(store, lt.env.device.signing(),
                              Pointer(name, a_id, m.label, seq, int(time.time()), digest))

        # a recipe that says private: refused, nothing defined
        private = genuine.meta["recipe"].replace('kind = "business"', 'kind = "private"')
        await sync_planted(2, domain=planted, recipe=private)
        lt.lose_a(name)
        result = await lt.rekey_for_b(name)
        with pytest.raises(RestoreError, match="snapshot 0000000002: its recipe"):
            await restore_vm(lt.b, name, from_device=a_id)
        assert_not_restored(lt, name)

        # the replayed older latest: B's agent executed the rekey order (min_seq 2); the
        # server replays sync 1's pointer (A's signature, valid) over B's copy
        assert result.seq == 2
        await lt.accept_on_b(name, result)
        assert accepted_min_seq(lt.b_cfg.manage_dir, name) == 2
        key_file = lt.b.keys.path(name)
        accepted_key = key_file.read_bytes()
        await store.put_atomic(layout.vm_pointer(b_id, name), old_latest)
        with pytest.raises(RemoteIntegrityError,
                           match=r"pointer.*seq 1 is older than seq 2") as exc:
            await restore_vm(lt.b, name, from_device=a_id)
        assert layout.vm_pointer(b_id, name) in str(exc.value)
        assert_not_restored(lt, name)
        assert not (lt.b_cfg.state_dir / "vms" / name).exists(), "replayed latest: a recipe"
        # no key of the restore's own: only the one the agent accepted, untouched
        assert key_file.read_bytes() == accepted_key, "replayed latest: the key changed"

        # the planted definition with A's genuine recipe: rebuilt from the recipe
        await sync_planted(3, domain=planted)
        # IT rekeys again (afresh: a rerun keeps what it copied when the size matches)
        shutil.rmtree(lt.env.dc.root / layout.vm_dir(b_id, name))
        await lt.rekey_for_b(name)
        vm = await restore_vm(lt.b, name, from_device=a_id)
        conn = libvirt.open(URI)
        try:
            xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        finally:
            conn.close()
        b_root = ET.fromstring(xml)
        assert b_root.find("devices/hostdev") is None and qemu not in xml
        assert str(secret_file) not in xml
        assert [t.get("dev") for t in b_root.iterfind("devices/disk/target")] == ["vda", "vdb"]
        assert b_root.find(f"metadata/{{{VM_NS}}}vm").get("kind") == "business"  # type: ignore[union-attr]
        assert b_root.findtext("uuid") == genuine.meta["uuid"] and vm.kind == "business"
        assert [m.get("address") for m in b_root.iterfind("devices/interface/mac")] == \
            [mac.get("address")]
        await lt.b.start(name)  # under B's lease, with its own key
        assert (await lt.b.get(name)).state == "running"
