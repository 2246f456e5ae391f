"""Restore benchmark (issue 19): a streamed restore against a full restore, same snapshot.

Per disk size (default 2 GiB and 8 GiB): a snapshot of a business VM whose disk
is half random 64 KiB chunks and half zero chunks is written into a repository
served by a loopback sshd (tests/integration/fixtures_sshd.py); laptop B reads it
over its confined SFTP account, as on a real laptop.

* ``full_restore_s``: ``vm restore`` (every chunk downloaded and verified, the
  LUKS disk written) then start, until the domain runs;
* ``stream_running_s``: ``vm restore --stream`` until the domain runs;
* ``fill_s``: from the streamed restore's start until every disk is local (no
  backing chain); ``fill_vs_full_restore`` = fill_s / full_restore_s;
* ``read_p50_ms``: during the fill, the median of 4 KiB reads at random offsets
  ahead of the pull (not yet local), through the VM's own disk (QEMU's ``qemu-io``
  on the guest's block backend, over the monitor).

    PYTHONPATH=python-services/src python bench/restore.py [--mib 2048 8192] [--running-only]

``--running-only``: the streamed restore alone, on a fresh laptop (it makes the VM's
network), until the VM runs; no full restore, no fill (``stream_running_s`` only).

Needs root (qemu:///system, sshd), libvirtd, qemu-img, nbdkit with its Python
plugin.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import libvirt_qemu

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE.parent / "tests/integration"),
                str(HERE.parent / "python-services/src")]

from fixtures_virt import URI
from stream_env import CHUNK, give_to, put_snapshot_of, streamed

from vmclient.provision.restore import restore as full_restore
from vmclient.provision.stream import Streams
from vmclient.store import layout
from vmclient.virt.stream import pull_state

READS = 25


def pieces(mib: int, seed: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    zero = bytes(CHUNK)
    for i in range(mib * (1 << 20) // CHUNK):
        yield rnd.randbytes(CHUNK) if i % 2 == 0 else zero


def hmp_read(dom: libvirt.virDomain, offset: int) -> float:
    t = time.monotonic()
    out = libvirt_qemu.qemuMonitorCommand(
        dom, f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "read {offset} 4k"',
        libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    if "error" in out.lower():
        raise RuntimeError(f"read at {offset}: {out}")
    return time.monotonic() - t


async def one(mib: int, running_only: bool = False) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="vmclient-bench-restore-") as tmp:
        async with streamed(Path(tmp)) as s:
            vm = s.env.name("bench")
            size = mib << 20
            await put_snapshot_of(s.env, s.server.repo, vm, size, pieces(mib, mib), s.keys)
            give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
            if running_only:
                streams = Streams(s.prov, s.config)
                t = time.monotonic()
                await streams.restore(vm)
                running_s = time.monotonic() - t
                await streams.remove(vm)
                await streams.close()
                return {"disk_mib": mib, "stream_running_s": round(running_s, 2)}
            # full restore, then start
            t = time.monotonic()
            await full_restore(s.prov, vm)
            await s.prov.start(vm)
            full_s = time.monotonic() - t
            await s.prov.stop(vm, force=True)
            await s.prov.remove(vm)
            # streamed
            streams = Streams(s.prov, s.config)
            t = time.monotonic()
            installed = await streams.restore(vm)
            running_s = time.monotonic() - t
            conn = libvirt.open(URI)
            latencies = []
            try:
                dom = conn.lookupByName(vm)
                rnd = random.Random(1)
                for _ in range(READS):
                    st = await pull_state(s.env.hv, installed.uuid, vm)
                    cur = max((c for c, _e in st.jobs.values()), default=0)
                    if not st.backed or cur > size - (64 << 20):
                        break
                    # an even chunk (random data): fetched, not answered as zeros
                    start = (cur + (32 << 20)) // (2 * CHUNK)
                    chunk = rnd.randrange(start, size // (2 * CHUNK)) * 2
                    latencies.append(await asyncio.to_thread(hmp_read, dom, chunk * CHUNK + 4096))
            finally:
                conn.close()
            await streams.done[vm].wait()
            fill_s = time.monotonic() - t
            await streams.close()
            await s.prov.stop(vm, force=True)
            await s.prov.remove(vm)
    return {"disk_mib": mib, "stream_running_s": round(running_s, 2),
            "full_restore_s": round(full_s, 2), "fill_s": round(fill_s, 2),
            "fill_vs_full_restore": round(fill_s / full_s, 3),
            "read_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else -1}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--running-only", action="store_true",
                    help="the streamed restore alone, until the VM runs")
    args = ap.parse_args()
    runs = []
    for mib in args.mib:
        r = await one(mib, args.running_only)
        print(f"{mib} MiB: {r}", file=sys.stderr)
        runs.append(r)
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    asyncio.run(main())
