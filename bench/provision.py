"""Provisioning download over SFTP against OpenSSH's own client, and an upgrade's cost.

Same run, same sshd (tests/integration/fixtures_sshd.py: a real OpenSSH sshd on
127.0.0.1, the device confined as ``vmclient-admin enrol`` prints), same
account, same cipher (aes256-gcm@openssh.com), same bytes:

1. A synthetic disk (1 MiB runs: a quarter zeros, half random, a quarter
   text) becomes a qcow2 (qemu-img) and is published with
   ``vmclient-admin publish``; a device is enrolled and assigned.
2. ``sftp_mib_s``: the device downloads the image as an install does
   (provd's ``Receiver.resolve`` + ``Receiver.download``: config, catalog,
   wrapped key, manifest, indexes, then every pack range, each chunk
   authenticated (AES-GCM, its id bound in; decompressed and checked against
   its id when an install assembles the disk, not timed here), the sealed
   chunks appended to the chunk cache, fsynced) — pack bytes per second.
   The previous round's cache is deleted before the timer starts (as
   ``sftp -b``'s previous files are).
   ``openssh_sftp_mib_s``: ``sftp -b`` fetches the same pack files into a
   directory on the same file system; ``openssh_sftp_durable_mib_s`` counts
   an fsync of the files it wrote as well (our cache is fsynced before a
   download counts as done; ``sftp`` leaves its files in the page cache), and
   ``ratio_vs_openssh_durable`` compares with that.  Best of ``--rounds``
   each, alternating which goes first, the page cache's dirty data written
   back before each (untimed).  ``paired_ratio_vs_openssh`` and
   ``paired_ratio_vs_openssh_durable``: the median over the rounds of the ratio
   within a round (ours against the ``sftp`` run beside it), which a machine
   whose speed drifts from round to round moves less than the best-of figures.
   The key files provd reads are written once, before the first round.
   ``cpu_s_per_gib`` (this process, its threads),
   ``ssh_cpu_s_per_gib`` (its ssh processes) and ``openssh_cpu_s_per_gib``
   (``sftp`` and its ssh): CPU seconds per GiB of pack bytes, the median of
   the rounds — unlike the rates, hardly moved by what else the machine runs.
   Our side is the laptop's store as provd runs it:
   ``--connections`` SFTP connections (default one per core), each an
   OpenSSH ``ssh`` process driven by one thread of this process, where worker
   threads authenticate the chunks and append them to the cache.
   The timed part includes connecting (starting ssh, SSH handshakes).
   ``install_image_mib_s``: disk MiB per second of ``vmclient-admin``'s
   verified read of the image into a raw file (``--concurrency`` reads in
   flight, a pwrite per chunk).
3. Upgrade: v2 = v1 with ``--change`` (2 %) of the disk rewritten as scattered
   64 KiB writes (random offsets aligned to 64 KiB, the qcow2 cluster and
   dirty-bitmap granularity), published; a v1 holder downloads v2 through
   :func:`plan_download`.  ``upgrade_downloaded_mib`` counts every byte the
   store read for it (documents, indexes, packs).

Needs root (sshd chroot, a device account) and qemu-img.

    sudo PYTHONPATH=python-services/src python bench/provision.py [--size 512]
"""

from __future__ import annotations

import argparse
import asyncio
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests/integration"),
                str(HERE.parent / "python-services/src")]

from fixtures_sshd import SSHServer, ssh_server
from sftp_repo import Device, Repo, qcow2

from vmclient.admin.images import read_published
from vmclient.host.files import write_private
from vmclient.host.keys import DeviceKeys
from vmclient.provision.progress import Progress
from vmclient.provision.receiver import Receiver
from vmclient.store import crypto, layout
from vmclient.store.repo import (
    get_catalog,
    get_config,
    get_image_manifest,
    get_wrapped_key,
)
from vmclient.transport.sftp import CIPHER, DEFAULT_CONNECTIONS, SFTPStore

# the admin keys of the bench's throw-away repository, encrypted at rest as init requires
os.environ.setdefault("VMCLIENT_ADMIN_PASSPHRASE", "bench passphrase")
MiB = 1 << 20
GiB = 1 << 30
CLUSTER = 64 << 10


class CountingStore(SFTPStore):
    """The SFTP store, counting the bytes every ``get`` and ``get_range`` returned."""

    fetched = 0

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        data = await super().get(path, offset, length)
        self.fetched += len(data)
        return data

    async def get_range(self, path: str, offset: int, length: int,
                        into: bytearray | None = None) -> bytearray | memoryview:
        data = await super().get_range(path, offset, length, into)
        self.fetched += len(data)
        return data


def device_store(server: SSHServer, account, connections: int) -> CountingStore:  # type: ignore[no-untyped-def]
    return CountingStore(server.store(account, connections=connections).target)


async def receive(store: CountingStore, repo: Repo, dev: Device, state: Path) -> int:
    """What an install downloads, as provd's Receiver does it: the verified catalog,
    key and manifest, then every chunk fetched, authenticated (AES-GCM) and
    appended to the chunk cache (the resume journal), which is fsynced."""
    try:
        receiver = Receiver(store, repo.admin_public, DeviceKeys(device_keys(dev, state)),
                            state)
        resolved = await receiver.resolve("office")
        return await receiver.download(resolved, Progress(), lambda _p: None)
    finally:
        await store.close()


def device_keys(dev: Device, state: Path) -> Path:
    """The directory of the device's key files, as provd finds them (written once, before
    the first round: provd does not write its keys for a download)."""
    keys = state.parent / f"{state.name}-device"
    if not keys.is_dir():
        for name, key in (("signing.key", dev.signing), ("wrapping.key", dev.wrapping)):
            write_private(keys / name, crypto.raw_private(key))
    return keys


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process (all its threads) and of its children
    that ended (ssh processes, ``sftp`` and its ssh)."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def timed_receive(store: CountingStore, repo: Repo, dev: Device, state: Path
                  ) -> tuple[float, float, float]:
    """Seconds :func:`receive` takes into an empty ``state`` (the previous round's cache
    is deleted first, untimed), and the CPU seconds it cost this process and its ssh
    processes."""
    shutil.rmtree(state, ignore_errors=True)
    device_keys(dev, state)
    own, children = cpu_seconds()
    t = time.perf_counter()
    asyncio.run(receive(store, repo, dev, state))
    wall = time.perf_counter() - t
    own_after, children_after = cpu_seconds()
    return wall, own_after - own, children_after - children


async def download(store: CountingStore, repo: Repo, wrapping, out: Path, concurrency: int,  # type: ignore[no-untyped-def]
                   **kw):  # type: ignore[no-untyped-def]
    try:
        return await read_published(store, repo.admin_public, wrapping, "office", out,
                                    concurrency=concurrency, **kw)
    finally:
        await store.close()


def openssh_fetch(server: SSHServer, account, packs: list[str], dest: Path  # type: ignore[no-untyped-def]
                  ) -> tuple[float, float, float]:
    """Seconds ``sftp -b`` takes to fetch ``packs`` into ``dest``; those plus the seconds
    an fsync of every file it wrote (and of ``dest``) takes after it, as our chunk cache
    is fsynced before a download counts as done; and the CPU seconds sftp and its ssh
    cost."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    batch = dest.parent / "batch"
    batch.write_text("".join(f"get /{p} {dest}/\n" for p in packs))
    cmd = ["sftp", "-q", "-b", str(batch), "-i", str(account.key_file), "-P", str(server.port),
           "-o", f"UserKnownHostsFile={server.known_hosts}", "-o", "IdentitiesOnly=yes",
           "-o", f"Ciphers={CIPHER}", "-o", "BatchMode=yes", f"{account.user}@127.0.0.1"]
    _own, children = cpu_seconds()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    sftp_cpu = cpu_seconds()[1] - children
    for f in dest.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return wall, time.perf_counter() - start, sftp_cpu


def disk_image(mib: int, seed: int = 1) -> bytearray:
    """1 MiB runs: a quarter zeros, half random, a quarter text unique to its run.

    (chunk_pipeline's mix repeats its text and record runs, which deduplicate
    to almost nothing: too few pack bytes to time a transfer.)
    """
    rng = random.Random(seed)
    out = bytearray(mib * MiB)
    words = (b"vmclient laptop sync chunk manifest catalog order lease wipe business private "
             b"repository kernel driver").split()
    for i in range(mib):
        kind = i % 4
        if kind in (1, 3):
            out[i * MiB:(i + 1) * MiB] = os.urandom(MiB)
        elif kind == 2:
            text = b" ".join(rng.choice(words) for _ in range(MiB // 5))
            out[i * MiB:(i + 1) * MiB] = (b"%d " % i + text)[:MiB].ljust(MiB, b".")
    return out


def scatter(data: bytearray, fraction: float, seed: int = 7) -> int:
    """Overwrite ``fraction`` of the disk with random 64 KiB clusters; returns bytes changed."""
    rng = random.Random(seed)
    clusters = len(data) // CLUSTER
    picked = rng.sample(range(clusters), max(1, round(clusters * fraction)))
    for c in picked:
        data[c * CLUSTER:(c + 1) * CLUSTER] = os.urandom(CLUSTER)
    return len(picked) * CLUSTER


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=512, help="disk size in MiB (default 512)")
    ap.add_argument("--change", type=float, default=0.02, help="share of the disk v2 rewrites")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                    help="SFTP connections (default: the laptop's, one per core, at most 4)")
    ap.add_argument("--concurrency", type=int, default=2 * DEFAULT_CONNECTIONS,
                    help="ranged reads in flight of the install and upgrade reads (default: 2 per "
                         "connection; the Receiver keeps its own 4)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vmclient-bench-"))
    try:
        with ssh_server() as server:
            result = run(args, server, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:>24}: {value}")
    print(json.dumps(result))


def alternate(args: argparse.Namespace, server: SSHServer, repo: Repo, dev: Device,
              packs: list[str], work: Path
              ) -> tuple[list[float], list[float], dict[str, list[float]]]:
    """``--rounds`` downloads of ours and of ``sftp -b``, alternated (ours first in even
    rounds, sftp first in odd ones), each after the page cache's dirty data is written
    back (untimed): (our seconds, theirs, theirs with an fsync after, CPU seconds by
    figure name)."""
    ours, theirs, durable = [], [], []
    cpu: dict[str, list[float]] = {"cpu_s_per_gib": [], "ssh_cpu_s_per_gib": [],
                                   "openssh_cpu_s_per_gib": []}

    def ours_round() -> None:
        os.sync()
        wall, own, ssh = timed_receive(device_store(server, dev.account, args.connections),
                                       repo, dev, work / "state")
        ours.append(wall)
        cpu["cpu_s_per_gib"].append(own)
        cpu["ssh_cpu_s_per_gib"].append(ssh)

    def openssh_round() -> None:
        os.sync()
        wall, synced, sftp = openssh_fetch(server, dev.account, packs, work / "openssh")
        theirs.append(wall)
        durable.append(synced)
        cpu["openssh_cpu_s_per_gib"].append(sftp)

    for rnd in range(args.rounds):
        for step in (ours_round, openssh_round) if rnd % 2 == 0 else (openssh_round,
                                                                      ours_round):
            step()
    return ours, theirs, durable, cpu


def run(args: argparse.Namespace, server: SSHServer, work: Path) -> dict[str, object]:
    t0 = time.perf_counter()
    disk = disk_image(args.size)
    raw = work / "v1.raw"
    raw.write_bytes(disk)
    repo = Repo(server, work)
    assert repo.admin("init") == 0
    t = time.perf_counter()
    assert repo.admin("publish", "office", str(qcow2(raw))) == 0
    publish_s = time.perf_counter() - t
    dev = repo.enrol("bench-laptop")
    assert repo.admin("assign", "office", "bench-laptop") == 0
    packs = sorted(str(p.relative_to(server.repo))
                   for p in (server.repo / "images/office/store/packs").glob("*/*"))
    pack_bytes = sum((server.repo / p).stat().st_size for p in packs)

    ours, theirs, durable, cpu = alternate(args, server, repo, dev, packs, work)
    installs = []
    out = work / "system.raw"
    store = device_store(server, dev.account, args.connections)
    t = time.perf_counter()
    asyncio.run(download(store, repo, dev.wrapping, out, args.concurrency))
    installs.append(time.perf_counter() - t)
    if out.read_bytes() != disk:
        raise SystemExit("downloaded disk differs from the published one")
    sftp_mib_s = pack_bytes / MiB / min(ours)
    openssh_mib_s = pack_bytes / MiB / min(theirs)
    openssh_durable_mib_s = pack_bytes / MiB / min(durable)

    v2 = bytearray(disk)
    changed = scatter(v2, args.change)
    raw2 = work / "v2.raw"
    raw2.write_bytes(v2)
    assert repo.admin("publish", "office", str(qcow2(raw2))) == 0
    store = device_store(server, dev.account, args.connections)

    async def v1_chunks() -> dict[bytes, bytes]:
        admin = repo.admin_public
        keys = await get_wrapped_key(store, layout.image_key("office", crypto.key_id(
            dev.wrapping.public_key())), {crypto.key_id(admin): admin}, "image:office",
            dev.wrapping)
        cfg = await get_config(store, admin)
        catalog, _d = await get_catalog(store, admin, cfg.repository)
        v1 = catalog.find("office", 1)
        assert v1 is not None
        m1 = await get_image_manifest(store, keys, "office", 1, v1.manifest)
        cs = m1.disks[0].chunk_size
        return {cid: bytes(disk[i * cs:(i + 1) * cs]) for i, cid in enumerate(m1.disks[0].ids)}

    have = asyncio.run(v1_chunks())
    asyncio.run(store.close())
    store = device_store(server, dev.account, args.connections)
    out2 = work / "system-v2.raw"
    _m2, fetched = asyncio.run(download(store, repo, dev.wrapping, out2, args.concurrency,
                                        local=have))
    if out2.read_bytes() != v2:
        raise SystemExit("upgraded disk differs from v2")
    return {
        "image_mib": args.size,
        "pack_mib": round(pack_bytes / MiB, 1),
        "publish_s": round(publish_s, 2),
        "sftp_mib_s": round(sftp_mib_s, 1),
        "openssh_sftp_mib_s": round(openssh_mib_s, 1),
        "ratio_vs_openssh": round(sftp_mib_s / openssh_mib_s, 3),
        "openssh_sftp_durable_mib_s": round(openssh_durable_mib_s, 1),
        "ratio_vs_openssh_durable": round(sftp_mib_s / openssh_durable_mib_s, 3),
        "paired_ratio_vs_openssh": round(statistics.median(
            t / o for o, t in zip(ours, theirs, strict=True)), 3),
        "paired_ratio_vs_openssh_durable": round(statistics.median(
            d / o for o, d in zip(ours, durable, strict=True)), 3),
        # CPU seconds per GiB of pack bytes, median of the rounds (load-independent, unlike
        # the rates): the receiving process, its ssh processes, and sftp -b with its ssh
        **{key: round(statistics.median(seconds) * GiB / pack_bytes, 2)
           for key, seconds in cpu.items()},
        "install_image_mib_s": round(args.size / min(installs), 1),
        "upgrade_changed_mib": round(changed / MiB, 2),
        "upgrade_downloaded_mib": round(store.fetched / MiB, 2),
        "upgrade_pack_mib": round(fetched.plan.download_bytes / MiB, 2),
        "upgrade_ratio": round(store.fetched / changed, 3),
        "connections": args.connections,
        "concurrency": args.concurrency,
        "total_s": round(time.perf_counter() - t0, 1),
    }


if __name__ == "__main__":
    main()
