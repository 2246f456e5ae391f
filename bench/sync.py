"""Sync benchmark: our incremental VM sync against restic on the same synthetic disk.

Builds a synthetic disk (default 2 GiB: a boot sector that halts the guest, then
1 MiB runs of zeros, random bytes, text and binary records), runs it as the disk
of a KVM domain that boots it and idles, and
measures in one run, against repositories on the same local file system:

* ours: initial sync (full pull-mode backup), incremental sync after 1 % of the
  disk changed in scattered 64 KiB writes (dirty bitmap), restore of the
  latest snapshot to a raw file (as restic restores it; a qcow2 costs one
  ``qemu-img convert`` more);
* restic (Debian package): ``restic backup`` of a raw copy of the same disk
  before and after the same writes, ``restic restore``.  Our restore fsyncs the
  disk before renaming it into place and restic's does not, so
  ``restic_restore_s`` includes an fsync of the file restic wrote (both then
  deliver a durable disk); ``restic_restore_nosync_s`` is restic alone.  Each tool's
  initial backup runs ``--initial-rounds`` times (default 3), each into a new repository
  (ours as a new device with new keys), alternated.  The restores
  run ``--restore-rounds`` times each (default 3), and ``--incr-rounds`` times (default 3)
  1 % of the disk changes and both tools back it up, the two tools alternating which goes
  first; the medians are reported and every run is listed.

Before every measured step the page cache's dirty data is written back
(``sync``, untimed), so no step pays for the writes of the set-up or of the
step before it, whichever tool ran there.

With ``--transport sftp`` (the default) both repositories are reached over
SFTP on the same loopback sshd (tests/integration/fixtures_sshd.py): ours as a
confined device account (:class:`SFTPStore`: OpenSSH's ``ssh``), restic as root with
OpenSSH's ``ssh -s sftp``; with ``--transport local`` both are local
directories; with ``--transport s3`` both are prefixes of one bucket on SeaweedFS on
127.0.0.1 (tests/integration/fixtures_s3.py): ours as the device's own identity
(:class:`S3Store`, boto3), restic through its own S3 backend with the admin's key
(bench/s3.py runs this).  The last line is one JSON object.

    PYTHONPATH=python-services/src python bench/sync.py [--size MIB] [--transport local]
        [--initial-rounds N] [--restore-rounds N] [--incr-rounds N]

Needs root (qemu:///system, sshd), libvirtd, qemu-img/qemu-io, KVM and restic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import libvirt
import libvirt_qemu

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests/integration"),
                str(HERE.parent / "python-services/src")]

from fixtures_s3 import BUCKET, SeaweedFS, seaweedfs_server
from fixtures_sshd import SSHServer, ssh_server
from fixtures_virt import BOOT_SECTOR, cpu_profile, wait_idle

from vmclient.store import crypto
from vmclient.store.remote import RemoteStore
from vmclient.sync import engine, restore
from vmclient.transport import close_store
from vmclient.transport.localfs import LocalDirStore
from vmclient.transport.sftp import CIPHER
from vmclient.virt.libvirt import Hypervisor

MIB = 1 << 20
IMAGES = Path("/var/lib/libvirt/images/vmclient-test")
WORDS = (b"the quick brown fox jumps over lazy dogs vmclient laptop sync chunk "
         b"manifest catalog order lease wipe business private repository ").split()
XML = """<domain type='{virt}'><name>{name}</name><uuid>{uuid}</uuid>
<memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{disk}'/><target dev='vda' bus='virtio'/></disk><memballoon model='none'/>
</devices><metadata><vmc:vm xmlns:vmc='https://vmclient.org/xmlns/vm/1' kind='business'
sync='disks'/></metadata></domain>"""


def synthetic(path: Path, mib: int, rng: random.Random) -> None:
    """A boot sector, then a quarter each of zeros (left sparse), random bytes, text and
    binary records."""
    text = b" ".join(rng.choice(WORDS) for _ in range(MIB // 4))[:MIB]
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        f.write(BOOT_SECTOR)
        for i in range(mib):
            kind = i % 4
            if kind == 0:
                continue
            f.seek(i * MIB)
            if kind == 1:
                f.write(rng.randbytes(MIB))
            elif kind == 2:
                f.write(text[i % 97:] + text[:i % 97])
            else:
                f.write(b"".join((i * 65536 + j).to_bytes(4, "little") + b"\x7fELF" + bytes(8)
                                 for j in range(MIB // 16)))


def change(dom: libvirt.virDomain, raw: Path, mib: int, work: Path, rng: random.Random) -> int:
    """1 % of the disk in scattered 64 KiB writes, to the VM (HMP qemu-io) and the raw copy."""
    n = max(1, mib * MIB // 100 // 65536)
    src = work / "write.bin"
    with open(raw, "r+b") as f:
        for off in rng.sample(range(mib * 16), n):
            data = rng.randbytes(65536)
            src.write_bytes(data)
            os.chmod(src, 0o644)
            _hmp(dom, f"write -s {src} {off * 65536} 65536")
            f.seek(off * 65536)
            f.write(data)
    _hmp(dom, "flush")
    return n * 65536


def _hmp(dom: libvirt.virDomain, cmd: str) -> None:
    out = libvirt_qemu.qemuMonitorCommand(
        dom, f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "{cmd}"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if out.strip():
        raise RuntimeError(out)


def settle() -> None:
    """Untimed, before every measured step: write back what earlier steps (and the set-up)
    left dirty, so no step pays for the one before it (each tool's run starts from the
    same state; ours would otherwise run first into the set-up's 3.5 GB of writeback)."""
    os.sync()


def fsync_tree(path: Path) -> float:
    """fsync every file below ``path`` (as ``sync FILE...`` does); returns the seconds taken."""
    start = time.perf_counter()
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return time.perf_counter() - start


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Where:
    """Where the two repositories live: local directories, behind a loopback sshd, or
    in one bucket of a loopback SeaweedFS."""

    def __init__(self, work: Path, server: SSHServer | None, s3: SeaweedFS | None = None
                 ) -> None:
        self.server, self.s3 = server, s3
        self.ours = server.repo if server else work / "ours"
        self.restic_base = (server.dir if server else work) / "restic"
        self.prefix = s3.prefix() if s3 else ""
        self.restic_round = 0  # each initial round backs up into a new restic repository

    @property
    def restic(self) -> Path:
        return self.restic_base.with_name(f"restic-{self.restic_round}")

    def ours_store(self, device_id: str) -> RemoteStore:
        if self.s3 is not None:
            return self.s3.store(self.s3.add_device(self.prefix, device_id), self.prefix)
        if self.server is None:
            return LocalDirStore(self.ours)
        return self.server.store(self.server.add_device(device_id))

    def ours_bytes(self) -> int:
        return self._s3_bytes(self.prefix) if self.s3 else du(self.ours)

    def restic_bytes(self) -> int:
        return (self._s3_bytes(f"{self.prefix}-restic-{self.restic_round}") if self.s3
                else du(self.restic))

    def _s3_bytes(self, prefix: str) -> int:
        assert self.s3 is not None
        client = self.s3.store(self.s3.admin, "").client
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                 Prefix=prefix + "/")
        total = sum(o["Size"] for page in pages for o in page.get("Contents", ()))
        client.close()
        return int(total)

    def restic_env(self) -> dict[str, str]:
        if self.s3 is None:
            return {}
        return {"AWS_ACCESS_KEY_ID": self.s3.admin.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.admin.secret_key}

    def restic_args(self) -> list[str]:
        if self.s3 is not None:
            prefix = f"{self.prefix}-restic-{self.restic_round}"
            return ["-r", f"s3:{self.s3.endpoint}/{BUCKET}/{prefix}"]
        if self.server is None:
            return ["-r", str(self.restic)]
        s, a = self.server, self.server.admin
        ssh = (f"ssh root@127.0.0.1 -p {s.port} -i {a.key_file} -o IdentitiesOnly=yes "
               f"-o BatchMode=yes -o UserKnownHostsFile={s.known_hosts} -o Ciphers={CIPHER} "
               "-s sftp")
        return ["-r", f"sftp:root@127.0.0.1:{self.restic}", "-o", f"sftp.command={ssh}"]


def restic(where: Where, *args: str) -> float:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", **where.restic_env()}
    start = time.perf_counter()
    subprocess.run(["restic", "--quiet", *where.restic_args(), *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


async def ours(dom: libvirt.virDomain, work: Path, raw: Path, mib: int, rng: random.Random,
               out: dict[str, float], where: Where, restore_rounds: int = 3,
               incr_rounds: int = 3, initial_rounds: int = 3) -> None:
    hv = Hypervisor()
    await hv.connect()
    stores: list[RemoteStore] = []
    try:
        device, keys, remote, sync = await initials(hv, dom, work, raw, where, initial_rounds,
                                                    stores, out)
        await incrementals(where, sync, dom, raw, mib, work, rng, incr_rounds, out)
        await restores(where, remote, device, keys, dom.name(), work, raw, restore_rounds, out)
    finally:
        for remote in stores:
            await close_store(remote)
        await hv.close()


async def initials(hv: Hypervisor, dom: libvirt.virDomain, work: Path, raw: Path,
                   where: Where, rounds: int, stores: list[RemoteStore],
                   out: dict[str, float]) -> tuple[crypto.Ed25519PrivateKey, crypto.KeySet,
                                                   RemoteStore,
                                                   Callable[[], Awaitable[engine.SyncResult]]]:
    """``rounds`` initial backups of each tool, alternated (ours first in even rounds),
    each into a repository of its own: ours as a new device (new keys, an empty local
    record: a full backup, as a laptop's first sync), restic into a new repository.
    The medians go to ``out``, every run listed; the last round's device and restic
    repository go on to the incrementals and restores."""
    runs: dict[str, list[float]] = {k: [] for k in (
        "ours_s", "ours_mib", "ours_cpu", "capture", "restic_s", "restic_mib")}
    last: list[object] = []

    async def ours_initial(rnd: int) -> None:
        device, keys = crypto.Ed25519PrivateKey.generate(), crypto.KeySet.generate()
        remote = await asyncio.to_thread(where.ours_store, crypto.key_id(device.public_key()))
        stores.append(remote)

        async def sync() -> engine.SyncResult:
            return await engine.sync_vm(hv, remote, engine.SyncJob(
                dom.UUIDString(), device, keys, state_dir=work / f"state-{rnd}",
                scratch_dir=IMAGES / "bench-scratch"))
        before = where.ours_bytes()
        await asyncio.to_thread(settle)
        cpu = cpu_seconds()
        first = await sync()
        stored = (where.ours_bytes() - before) / MIB
        runs["ours_s"].append(first.seconds)
        runs["ours_mib"].append(stored)
        # CPU of this process (every thread; not the ssh or sshd processes) per GiB stored
        runs["ours_cpu"].append((cpu_seconds() - cpu) / (stored / 1024))
        runs["capture"].append(first.capture_seconds)
        last[:] = [device, keys, remote, sync]

    async def restic_initial(rnd: int) -> None:
        where.restic_round = rnd
        await asyncio.to_thread(restic, where, "init")
        await asyncio.to_thread(settle)
        runs["restic_s"].append(await asyncio.to_thread(restic, where, "backup", str(raw)))
        runs["restic_mib"].append(where.restic_bytes() / MIB)

    for rnd in range(rounds):
        for step in (ours_initial, restic_initial) if rnd % 2 == 0 else (restic_initial,
                                                                          ours_initial):
            await step(rnd)
    med = statistics.median
    out["ours_initial_s"], out["ours_initial_mib"] = med(runs["ours_s"]), med(runs["ours_mib"])
    out["ours_initial_cpu_s_per_gib"] = round(med(runs["ours_cpu"]), 3)
    out["ours_initial_capture_s"] = med(runs["capture"])
    out["restic_initial_s"] = med(runs["restic_s"])
    out["restic_initial_mib"] = med(runs["restic_mib"])
    out["ours_initial_runs"] = [round(x, 3) for x in runs["ours_s"]]  # type: ignore[assignment]
    out["restic_initial_runs"] = [round(x, 3) for x in runs["restic_s"]]  # type: ignore[assignment]
    device, keys, remote, sync = last
    return device, keys, remote, sync  # type: ignore[return-value]


async def incrementals(where: Where, sync: Callable[[], Awaitable[engine.SyncResult]],
                       dom: libvirt.virDomain, raw: Path, mib: int, work: Path,
                       rng: random.Random, rounds: int, out: dict[str, float]) -> None:
    """``rounds`` times: 1 % of the disk changes, then each tool backs it up, alternated
    (ours first in even rounds, restic first in odd ones); medians go to ``out``, every
    run listed."""
    ours_s: list[float] = []
    ours_mib: list[float] = []
    capture: list[float] = []
    restic_s: list[float] = []
    restic_mib: list[float] = []
    changed: list[float] = []

    async def ours_incr() -> None:
        before = where.ours_bytes()
        await asyncio.to_thread(settle)
        r = await sync()
        assert r.mode == "incremental", r
        ours_s.append(r.seconds)
        ours_mib.append((where.ours_bytes() - before) / MIB)
        capture.append(r.capture_seconds)

    async def restic_incr() -> None:
        before = where.restic_bytes()
        await asyncio.to_thread(settle)
        restic_s.append(await asyncio.to_thread(restic, where, "backup", str(raw)))
        restic_mib.append((where.restic_bytes() - before) / MIB)

    for rnd in range(rounds):
        changed.append(change(dom, raw, mib, work, rng) / MIB)
        for step in (ours_incr, restic_incr) if rnd % 2 == 0 else (restic_incr, ours_incr):
            await step()
    med = statistics.median
    out["changed_mib"] = med(changed)
    out["ours_incr_s"], out["ours_incr_mib"] = med(ours_s), med(ours_mib)
    out["ours_incr_capture_s"] = med(capture)
    out["restic_incr_s"], out["restic_incr_mib"] = med(restic_s), med(restic_mib)
    out["ours_incr_runs"] = [round(x, 3) for x in ours_s]  # type: ignore[assignment]
    out["restic_incr_runs"] = [round(x, 3) for x in restic_s]  # type: ignore[assignment]


async def restores(where: Where, remote: object, device: crypto.Ed25519PrivateKey,
                   keys: crypto.KeySet, vm: str, work: Path, raw: Path, rounds: int,
                   out: dict[str, float]) -> None:
    """``rounds`` restores of each tool, alternated (ours first in even rounds, restic first
    in odd ones), each after the page cache's dirty data is written back, into a new file;
    the medians go to ``out``, every run listed."""
    dev = crypto.key_id(device.public_key())
    ours_runs: list[float] = []
    restic_runs: list[float] = []
    restic_nosync: list[float] = []
    for rnd in range(rounds):
        dest = work / f"restored-{rnd}" / "vda.raw"  # raw, as restic restores it
        restored = work / f"restic-restored-{rnd}"

        async def ours_restore(dest: Path = dest) -> None:
            dest.parent.mkdir()
            await asyncio.to_thread(settle)
            r = await restore.restore_vm(remote, {dev: device.public_key()}, keys,
                                         device=dev, vm=vm, dest={"vda": dest},
                                         fmt="raw")
            ours_runs.append(r.seconds)

        async def restic_restore(restored: Path = restored) -> None:
            await asyncio.to_thread(settle)
            t = await asyncio.to_thread(restic, where, "restore", "latest", "--target",
                                        str(restored))
            restic_nosync.append(t)
            # ours fsyncs the disk before it renames it into place; restic leaves it in
            # the page cache.  Both deliver a durable disk: restic's time includes fsync.
            restic_runs.append(t + await asyncio.to_thread(fsync_tree, restored))

        for step in ((ours_restore, restic_restore) if rnd % 2 == 0
                     else (restic_restore, ours_restore)):
            await step()
        same = await asyncio.to_thread(subprocess.run, ["qemu-img", "compare", "-f", "raw",
                                                        "-F", "raw", str(raw), str(dest)],
                                       capture_output=True)
        assert same.returncode == 0, same.stdout
        shutil.rmtree(dest.parent)
        shutil.rmtree(restored)
    out["ours_restore_s"] = statistics.median(ours_runs)
    out["restic_restore_s"] = statistics.median(restic_runs)
    out["restic_restore_nosync_s"] = statistics.median(restic_nosync)
    out["ours_restore_runs"] = [round(x, 3) for x in ours_runs]  # type: ignore[assignment]
    out["restic_restore_runs"] = [round(x, 3) for x in restic_runs]  # type: ignore[assignment]


def remove_domain(name: str) -> None:
    virsh = ["virsh", "-q", "-c", "qemu:///system"]
    subprocess.run([*virsh, "destroy", name], capture_output=True)
    for _attempt in range(5):  # the domain may still be busy with its last job
        r = subprocess.run([*virsh, "undefine", "--checkpoints-metadata", name],
                           capture_output=True, text=True)
        if r.returncode == 0 or "failed to get domain" in r.stderr:
            return
        time.sleep(1)
    print(f"could not remove {name}: {r.stderr.strip()}; scripts/clean-test-domains will")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="disk size in MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--transport", choices=("sftp", "local", "s3"), default="sftp")
    ap.add_argument("--restore-rounds", type=int, default=3,
                    help="restores of each tool, alternated; medians reported")
    ap.add_argument("--incr-rounds", type=int, default=3,
                    help="1 %% changes each backed up by both tools, alternated; medians")
    ap.add_argument("--initial-rounds", type=int, default=3,
                    help="initial backups of each tool, each into a new repository, "
                         "alternated; medians")
    args = ap.parse_args()
    out = measure(args.size, args.seed, args.transport, args.restore_rounds, args.incr_rounds,
                  args.initial_rounds)
    report(out)
    print(json.dumps({"transport": args.transport,
                      **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}}))


def report(out: dict[str, float]) -> None:
    for k in ("initial", "incr", "restore"):
        if out.get(f"restic_{k}_s"):
            print(f"{k}: ours {out[f'ours_{k}_s']:.2f} s, restic {out[f'restic_{k}_s']:.2f} s, "
                  f"ratio {out[f'ours_{k}_s'] / out[f'restic_{k}_s']:.3f}")


def measure(size: int, seed: int, transport: str, restore_rounds: int = 3,
            incr_rounds: int = 3, initial_rounds: int = 3) -> dict[str, float]:
    """One run of both tools on one disk of ``size`` MiB over ``transport``."""
    rng = random.Random(seed)
    name = f"vmbench-sync-{uuid.uuid4().hex[:6]}"
    IMAGES.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="vmbench-sync-", dir=IMAGES))
    os.chmod(work, 0o755)
    disk, raw = IMAGES / f"{name}.qcow2", work / "disk.raw"
    conn = libvirt.open("qemu:///system")
    out: dict[str, float] = {"disk_mib": size}
    try:
        synthetic(raw, size, rng)
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(disk)],
                       check=True)
        xml = XML.format(virt=cpu_profile().domain_type, name=name, uuid=uuid.uuid4(), disk=disk)
        dom = conn.defineXML(xml)
        dom.create()
        wait_idle(dom)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(ssh_server()) if transport == "sftp" else None
            s3 = stack.enter_context(seaweedfs_server()) if transport == "s3" else None
            where = Where(work, server, s3)
            asyncio.run(ours(dom, work, raw, size, rng, out, where, restore_rounds, incr_rounds,
                             initial_rounds))
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        remove_domain(name)  # with virsh: this process's libvirt event loop is closed now
        disk.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(IMAGES / "bench-scratch", ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
