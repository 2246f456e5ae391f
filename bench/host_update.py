#!/usr/bin/env python3
# ruff: noqa: ASYNC221  (processes run alone, timed)
"""Benchmark: a host update that changes 5 % of the root, through the repository and RAUC.

Two ext4 roots are made with ``mkfs.ext4 -d`` from the same tree (files of random data
filling most of the image); the second has ``--change`` percent of the root's bytes
rewritten (whole files, same sizes).  Each is made a signed RAUC bundle (``rauc bundle``,
verity format, uncompressed squashfs as repository-format.md §8.9 advises) and
published with ``vmclient-admin host publish``.  The laptop side fetches release 1 (a
full download), then release 2 with release 1's bundle as its seed: the download is
compared with the bytes that differ between the two roots (4 KiB blocks).  Then
release 2 is installed with Debian's ``rauc`` into the inactive file-backed slot
(:mod:`rauc_env`) while two idle VMs run on the real libvirtd: the CPU the install
costs (RAUC's service, its threads and children: the cpuacct counter of a cgroup of
its own, as systemd gives a service) over its wall time, once as RAUC
runs unconfined and once under ``--cpu-quota`` (the cgroup quota systemd's
``CPUQuota=`` sets; the image's ``rauc.service`` should carry it, with
``IOSchedulingClass=idle``).  Where the
kernel lacks device-mapper, the installed bundle is ``plain`` (rauc_env's note); the
download is measured on the verity bundles.

    python bench/host_update.py --mib 128 --change 5

The last line is one JSON object with ``changed_mib``, ``downloaded_mib``,
``install_cpu_share`` (of one core) and the ratio ``downloaded / changed``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests"),
                str(ROOT / "python-services" / "src")]

from fixtures_virt import domains
from rauc_env import dm_verity, make_bundle, rauc_system

from vmclient.admin import keys as admin_keys
from vmclient.admin import main as admin
from vmclient.manage import hostupdate
from vmclient.store.repo import get_catalog, get_config
from vmclient.transport.localfs import LocalDirStore

MiB = 1 << 20
FILE = MiB


def make_root(out: Path, tree: Path, mib: int, release: str) -> None:
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "os-release").write_text(f"ID=vmclient\nVERSION_ID={release}\n")
    for p in tree.rglob("*"):
        os.utime(p, (1700000000, 1700000000))
    with out.open("wb") as f:
        f.truncate(mib * MiB)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", "clear", "-E",
                    "root_owner=0:0,hash_seed=00000000-0000-0000-0000-000000000001",
                    "-T", "default", "-d", str(tree), str(out)], check=True,
                   env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})


def changed_bytes(a: Path, b: Path, block: int = 4096) -> int:
    n = 0
    with a.open("rb") as fa, b.open("rb") as fb:
        while x := fa.read(block):
            if x != fb.read(block):
                n += block
    return n


@contextlib.contextmanager
def service_group(pid: int, percent: float | None) -> Iterator[tuple[bool, Callable[[], float]]]:
    """``pid`` in a cgroup of its own, as systemd puts a service: under a CPU quota of
    ``percent`` of one core (cfs quota, what ``CPUQuota=`` sets) unless None, and
    accounted by the cpuacct controller, which counts every task of the group (threads
    and children) in nanoseconds.  Yields whether the quota was set and the group's CPU
    seconds so far; where no cgroup can be written, no quota and the process's own
    user + system time (clock ticks: 10 ms steps)."""
    name = f"vmclient-bench-{uuid.uuid4().hex[:8]}"
    cpu, acct = Path("/sys/fs/cgroup/cpu") / name, Path("/sys/fs/cgroup/cpuacct") / name
    made: list[Path] = []
    quota_set = False
    try:
        try:
            if percent is not None and percent > 0:
                cpu.mkdir()
                made.append(cpu)
                (cpu / "cpu.cfs_quota_us").write_text(str(int(percent * 1000)))
                (cpu / "cgroup.procs").write_text(str(pid))
                quota_set = True
            acct.mkdir()
            made.append(acct)
            (acct / "cgroup.procs").write_text(str(pid))

            def used() -> float:
                return int((acct / "cpuacct.usage").read_text()) / 1e9
            used.counter = "cpuacct"  # type: ignore[attr-defined]
        except OSError:
            def used() -> float:
                return cpu_s(pid)
            used.counter = "ticks"  # type: ignore[attr-defined]
        yield quota_set, used
    finally:
        for group in made:
            with contextlib.suppress(OSError):
                (group.parent / "cgroup.procs").write_text(str(pid))
            with contextlib.suppress(OSError):
                group.rmdir()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_roots(tmp: Path, mib: int, change: float) -> int:
    """root-1.ext4 and root-2.ext4 (``change`` percent of the root's bytes rewritten,
    whole files): the bytes that differ."""
    rng = random.Random(18)
    tree = tmp / "tree"
    files = int(mib * 0.85)
    (tree / "usr").mkdir(parents=True)
    for i in range(files):
        (tree / "usr" / f"f{i:05d}").write_bytes(rng.randbytes(FILE))
    make_root(tmp / "root-1.ext4", tree, mib, "1.0")
    for i in rng.sample(range(files), max(1, round(mib * change / 100))):
        (tree / "usr" / f"f{i:05d}").write_bytes(rng.randbytes(FILE))
    make_root(tmp / "root-2.ext4", tree, mib, "1.1")
    return changed_bytes(tmp / "root-1.ext4", tmp / "root-2.ext4")


async def run(mib: int, change: float, quota: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vmclient-bench-host-") as tmp_s:
        tmp = Path(tmp_s)
        changed = make_roots(tmp, mib, change)

        repo, keydir = tmp / "repo", tmp / "keys"
        argv = ["--repo", str(repo), "--key-dir", str(keydir), "-q"]
        os.environ["XDG_CONFIG_HOME"] = str(tmp / "xdg")
        assert await asyncio.to_thread(admin.main, [*argv, "init", "--no-passphrase"]) == 0
        with rauc_system(tmp / "rauc") as rauc:
            bundles = {}
            for n, release in ((1, "1.0"), (2, "1.1")):
                bundles[release] = make_bundle(tmp / f"b-{release}.raucb", release,
                                               tmp / f"root-{n}.ext4", rauc.cert, rauc.key,
                                               rauc.ca, fmt="verity")
                assert await asyncio.to_thread(admin.main, [
                    *argv, "host", "publish", str(bundles[release]), "--version", release]) == 0
            k = admin_keys.load(keydir)
            remote = LocalDirStore(repo)
            pub = k.admin.public_key()
            catalog, _d = await get_catalog(remote, pub, (await get_config(remote, pub)).repository)
            assert catalog.host is not None
            data = tmp / "data"
            t = time.monotonic()
            first = await hostupdate.fetch_bundle(remote, pub, k.escrow,
                                                  catalog.host.bundles[0], data)
            full_s = time.monotonic() - t
            cpu0, t = time.process_time(), time.monotonic()
            second = await hostupdate.fetch_bundle(remote, pub, k.escrow,
                                                   catalog.host.bundles[1], data,
                                                   seeds=(first.path,))
            delta_s, delta_cpu = time.monotonic() - t, time.process_time() - cpu0
            assert second.path.read_bytes() == bundles["1.1"].read_bytes()
            bundle_size = bundles["1.1"].stat().st_size

            install = second.path
            if not dm_verity():  # this kernel cannot mount verity bundles: plain, same root
                install = make_bundle(tmp / "install.raucb", "1.1", tmp / "root-2.ext4",
                                      rauc.cert, rauc.key, rauc.ca, fmt="plain")
            svc = int(subprocess.run(["pgrep", "-f", f"rauc service --conf={rauc.conf}"],
                                     capture_output=True, text=True).stdout.split()[0])
            with domains(f"vmbench-h{uuid.uuid4().hex[:6]}") as vms:
                names = [vms.create(f"vm{i}", halt=True).name() for i in range(2)]
                for name in names:
                    vms.wait_idle(name)
                rauc_cli = hostupdate.Rauc(conf=rauc.conf, env=rauc.env)
                with service_group(svc, None) as (_, used):
                    c0, t = used(), time.monotonic()
                    await rauc_cli.install("1.1", install)
                    free_s, free_cpu = time.monotonic() - t, used() - c0
                vcpu0 = [sum(v[2] for v in vms.conn.lookupByName(n).vcpus()[0]) for n in names]
                with service_group(svc, quota) as (quota_set, used):
                    c0, t = used(), time.monotonic()
                    said = await rauc_cli.install("1.1", install)
                    install_s, install_cpu = time.monotonic() - t, used() - c0
                    counter = used.counter  # type: ignore[attr-defined]
                vcpu1 = [sum(v[2] for v in vms.conn.lookupByName(n).vcpus()[0]) for n in names]
            with rauc.slot_b.open("rb") as f:
                assert f.read(mib * MiB) == (tmp / "root-2.ext4").read_bytes()
    return {
        "root_mib": mib, "change_percent": change,
        "bundle_mib": round(bundle_size / MiB, 2),
        "changed_mib": round(changed / MiB, 2),
        "downloaded_mib": round(second.downloaded / MiB, 2),
        "ratio": round(second.downloaded / changed, 3),
        "full_download_mib": round(first.downloaded / MiB, 2),
        "full_download_s": round(full_s, 2), "delta_download_s": round(delta_s, 2),
        "delta_cpu_s": round(delta_cpu, 2), "reused_chunks": second.reused,
        "install_s": round(install_s, 3), "install_cpu_s": round(install_cpu, 4),
        "install_cpu_counter": counter,
        "install_cpu_share": round(install_cpu / install_s, 3) if install_s else 0.0,
        "install_cpu_quota_percent": quota if quota_set else None,
        "install_unthrottled_s": round(free_s, 3),
        "install_unthrottled_cpu_share": round(free_cpu / free_s, 3) if free_s else 0.0,
        "install_format": "verity" if install == second.path else "plain",
        "vm_vcpu_ms_during_install": [round((b - a) / 1e6, 1)
                                      for a, b in zip(vcpu0, vcpu1, strict=True)],
        "rauc": said,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=128, help="root file system size")
    ap.add_argument("--change", type=float, default=5.0, help="percent of the root rewritten")
    ap.add_argument("--cpu-quota", type=float, default=9.0,
                    help="RAUC's CPU quota in percent of a core for the measured install, as "
                    "the image's rauc.service carries it (CPUQuota=9%%); 0: none")
    args = ap.parse_args()
    result = asyncio.run(run(args.mib, args.change, args.cpu_quota))
    print(f"host update: {result['changed_mib']} MiB of the root changed, "
          f"{result['downloaded_mib']} MiB downloaded (ratio {result['ratio']}); install "
          f"{result['install_s']} s at {result['install_cpu_share']} of a core", flush=True)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
