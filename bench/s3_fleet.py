"""Fleet simulation (issue 20): N devices syncing at once to one SeaweedFS, 1 then 2 volume servers

Each simulated device is what a laptop's sync daemon is, minus the VM: its own device key
and data keys, its own S3 identity that reaches only its own directory of the
repository, its own :class:`~vmclient.transport.s3.S3Store` (a boto3 client, made once, as
the daemon makes it once), and the real sync engine (:func:`vmclient.sync.engine.run`:
device lock, keys, parent, index, chunking, HMAC, zstd, AES-GCM, packs, index, snapshot,
latest, unlock) with a plain file as the VM's one disk, read whole (:class:`FleetRun`:
the capture adapter, libvirt's backup job, is all that is left out, as in the engine's
unit tests).  The disk is ``disk_mib`` MiB: a quarter zeros, the rest random bytes (so
the store receives what the disk holds: this measures the store and the client's data
path, not zstd).

How N devices run on 2 cores: ``procs`` worker processes (``--worker``), each an asyncio
loop driving its share of the devices, at most ``inflight`` syncs at once per process;
the other devices of a round wait for a slot.  All N are released at one instant, so the
store sees at most procs x inflight syncs in flight, and a round of N devices is a queue
of N syncs.  Reported per round: aggregate MiB/s (bytes the syncs uploaded, first release
to last completion), p50/p95 of one sync's own duration (engine.run, lock to unlock)
and p95 of the time from the release to a device's completion (what a device that
waited for a slot sees), S3 requests per sync, and CPU seconds of each SeaweedFS
process, of the clients and of the whole machine (others included) meanwhile.

Where the volume servers run (``modes``): ``netns``, each on an emulated host of its own
(tests/integration/fixtures_hosts.py: a network namespace behind a link of fixed
bandwidth, a CPU quota, its own directory), what ``scale_1_to_2`` is measured on; and
``shared``, all on this machine with nothing between them and the gateway, as before
(keys ending in ``_shared_host``): there both volume servers share the same cores and
disk, so a second one cannot add anything the first lacked
(python-services/docs/capacity-plan.md).  Each round reports, per emulated host, the MiB
its link carried to the server and how full the link ran (``link_volume<i>_use``, 1.0 =
the whole rate for the whole round); at the end, what each server took
(``fleet_servers``: volumes and bytes as the master's ``/vol/status`` has them, the
bytes of its ``.dat`` files, its link's bytes each way, the time its CPU quota held it
back).

Each round N is an initial sync of a VM of its own (``n<N>``) on devices 0..N-1, then an
incremental one after 1 % of each disk changed (at rest: the whole file is read and hashed,
as a stopped VM's disk is; a running VM's incremental reads only the dirty blocks).

Identities: SeaweedFS 4.48's IAM API (what ``vmclient-admin s3-identity issue`` speaks)
slows down with every identity it holds (measured here: ~0.05 s per write at 10
identities, 4-6 s at 60-80, the gateway mostly waiting, not computing), so issuing 200
through it would take tens of minutes.  The fleet's identities are given to the gateway
at its start instead (its static identities config), each scoped by the gateway's own
action scopes to its device's directory (``Read|Write|List:bucket/prefix/devices/<id>/*``,
:func:`device_actions`; coarser than the IAM policy, which also keeps the device record
and orders read-only; checked by hand on 4.48: device B's key cannot get, list, put or
delete A's objects, nor put the catalog).  Each request is still signed with, and
checked against, the device's own key.  python-services/docs/capacity-plan.md says
what this means for enrolling a fleet.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests/integration"),
                str(HERE.parent / "python-services/src")]

from fixtures_hosts import HostLimits

from vmclient.store import crypto, layout
from vmclient.sync import capture, disks, engine
from vmclient.sync.job import Hooks, SyncJob, SyncMode
from vmclient.transport.s3 import S3Credentials, S3Store, S3Target
from vmclient.virt.libvirt import SyncView

MIB = 1 << 20
CHUNK = 64 << 10
BUCKET = "vmclient"


# --- pure helpers -------------------------------------------------------------------------

def p(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` quantile (0 < q ≤ 1) of ``values`` (0.0 if empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def device_actions(bucket: str, prefix: str, device: str) -> list[str]:
    """SeaweedFS static-identity actions confining ``device`` to its own directory."""
    own = f"{bucket}/{prefix}/{layout.device_dir(device)}/*"
    return [f"Read:{own}", f"Write:{own}", f"List:{own}"]


def round_summary(results: list[dict[str, Any]], released: float) -> dict[str, float]:
    """Aggregate figures of one round: ``results`` one dict per device sync (``start``,
    ``end`` wall-clock seconds, ``seconds``, ``bytes``, ``requests``)."""
    end = max(r["end"] for r in results)
    wall = end - released
    total = sum(r["bytes"] for r in results)
    return {"wall_s": round(wall, 3), "mib": round(total / MIB, 2),
            "mib_s": round(total / MIB / wall, 2) if wall > 0 else 0.0,
            "p50_s": round(p([r["seconds"] for r in results], 0.5), 3),
            "p95_s": round(p([r["seconds"] for r in results], 0.95), 3),
            "p95_done_s": round(p([r["end"] - released for r in results], 0.95), 3),
            "requests_per_sync": round(sum(r["requests"] for r in results) / len(results), 1)}


# --- one simulated device (in a worker process) -----------------------------------------

class FleetRun(engine.Run):
    """The engine's steps with ``image`` as the VM's one disk, read whole (at rest)."""

    def __init__(self, remote: S3Store, job: SyncJob, vm: str, image: Path) -> None:
        view = SyncView(job.uuid, vm, False, "business", "disks", (), ())
        super().__init__(None, remote, job, view, Hooks())  # type: ignore[arg-type]
        self.image = image

    async def take(self) -> list[capture.Capture]:
        self.result.mode = SyncMode.AT_REST
        size = self.image.stat().st_size
        return [capture.Capture("vda", "system", size, self.image,
                                disks.whole_file(size, CHUNK))]


class Device:
    def __init__(self, spec: dict[str, Any], endpoint: str, prefix: str, work: Path) -> None:
        self.idx = spec["idx"]
        self.key = crypto.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(spec["key"]))
        self.keys = crypto.KeySet.derive(bytes.fromhex(spec["seed"]))
        self.image = Path(spec["disk"])
        self.work = work / f"d{self.idx}"
        self.store = S3Store(S3Target(bucket=BUCKET, prefix=prefix, endpoint=endpoint,
                                      credentials=S3Credentials(spec["access"],
                                                                spec["secret"])))
        self.requests = 0
        self.store.client.meta.events.register("before-send.s3", self._count)

    def _count(self, **_kw: Any) -> None:
        self.requests += 1

    async def sync(self, vm: str) -> dict[str, Any]:
        job = SyncJob(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.idx}/{vm}")), self.key,
                      self.keys, state_dir=self.work / "state", scratch_dir=self.work / "scratch")
        before = self.requests
        start = time.time()
        r = await engine.run(FleetRun(self.store, job, vm, self.image))
        return {"idx": self.idx, "start": start, "end": time.time(), "seconds": r.seconds,
                "bytes": r.uploaded_bytes, "requests": self.requests - before,
                "mode": str(r.mode)}


def change(image: Path, rng: random.Random) -> None:
    """1 % of the disk in scattered 64 KiB writes (at least one)."""
    size = image.stat().st_size
    n = max(1, size // 100 // CHUNK)
    with open(image, "r+b") as f:
        for i in rng.sample(range(size // CHUNK), n):
            f.seek(i * CHUNK)
            f.write(os.urandom(CHUNK))


async def one(d: Device, vm: str, slots: asyncio.Semaphore) -> dict[str, Any]:
    async with slots:
        return await d.sync(vm)


async def serve(init: dict[str, Any]) -> None:
    """The worker's loop: one JSON command a line on stdin, one JSON answer on stdout."""
    work = Path(init["work"])
    devices = {s["idx"]: Device(s, init["endpoint"], init["prefix"], work)
               for s in init["devices"]}
    slots = asyncio.Semaphore(init["inflight"])
    rng = random.Random(init["seed"])
    loop = asyncio.get_running_loop()
    print(json.dumps({"ready": len(devices)}), flush=True)
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            if cmd.get("quit"):
                break
            mine = [devices[i] for i in cmd["devices"] if i in devices]
            if cmd.get("change"):
                for d in mine:
                    change(d.image, rng)
                print(json.dumps({"changed": len(mine)}), flush=True)
                continue

            results = await asyncio.gather(*(one(d, cmd["vm"], slots) for d in mine))
            print(json.dumps({"results": results}), flush=True)
    finally:
        await asyncio.gather(*(d.store.close() for d in devices.values()))


def worker_main() -> None:
    import logging
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(json.loads(sys.stdin.readline())))


# --- the fleet (parent) ------------------------------------------------------------------

def cpu_of(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (its threads; not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict[str, float]:
    """Seconds of every core in each state since boot (/proc/stat)."""
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    tick = os.sysconf("SC_CLK_TCK")
    return {n: int(v) / tick for n, v in zip(names, fields, strict=True)}


def make_disk(path: Path, mib: int) -> None:
    """A quarter zeros (sparse), three quarters random bytes, in 1 MiB runs."""
    with open(path, "wb") as f:
        f.truncate(mib * MIB)
        for i in range(mib):
            if i % 4:
                f.seek(i * MIB)
                f.write(os.urandom(MIB))


class Workers:
    def __init__(self, procs: int, init: dict[str, Any]) -> None:
        self.procs = []
        for w in range(procs):
            mine = [s for s in init["devices"] if s["idx"] % procs == w]
            proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({**init, "devices": mine, "seed": w}) + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
        for proc in self.procs:
            self._answer(proc)  # ready

    @staticmethod
    def _answer(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker {proc.pid} ended (exit {proc.wait()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, cmd: dict[str, Any]) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        return [self._answer(proc) for proc in self.procs]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"quit": True}) + "\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        for proc in self.procs:  # (between rounds it quits at once; mid-round, interrupted)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measured_round(workers: Workers, cluster: Any, cmd: dict[str, Any]
                   ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    pids = {**cluster.pids(), **{f"client{i}": pid for i, pid in enumerate(workers.pids())}}
    links0 = {n: h.link_bytes() for n, h in cluster.on.items()}
    cpu0, m0 = {k: cpu_of(v) for k, v in pids.items()}, machine_cpu()
    released = time.time()
    results = [r for a in workers.ask(cmd) for r in a["results"]]
    cpu = {k: cpu_of(v) - cpu0[k] for k, v in pids.items()}
    m1 = machine_cpu()
    out = round_summary(results, released)
    machine = {k: m1[k] - m0[k] for k in m0}
    busy = sum(v for k, v in machine.items() if k not in ("idle", "iowait"))
    weed_cpu = sum(v for k, v in cpu.items() if not k.startswith("client"))
    client_cpu = sum(v for k, v in cpu.items() if k.startswith("client"))
    out.update({
        "cpu_weed_s": round(weed_cpu, 2), "cpu_clients_s": round(client_cpu, 2),
        "cpu_others_s": round(busy - weed_cpu - client_cpu, 2),
        "cpu_idle_s": round(machine["idle"], 2), "cpu_iowait_s": round(machine["iowait"], 2),
        "cpu_softirq_s": round(machine["softirq"], 2),  # (the links' packets, among others)
        "cores_busy": round(busy / out["wall_s"], 2) if out["wall_s"] else 0.0,
        **{f"cpu_{k}_s": round(v, 2) for k, v in cpu.items() if not k.startswith("client")}})
    for name, host in cluster.on.items():  # each emulated host's link: how full it ran
        to = host.link_bytes()["to"] - links0[name]["to"]
        out[f"link_{name}_mib"] = round(to / MIB, 2)
        out[f"link_{name}_use"] = round(
            to * 8 / (cluster.limits.mbit * 1e6 * out["wall_s"]), 3) if out["wall_s"] else 0.0
    return out, results


def run_fleet(volumes: int, ns: list[int], specs: list[dict[str, Any]], procs: int,
              inflight: int, work: Path, log: Any, placed: dict[str, Any],
              limits: HostLimits | None) -> dict[str, dict[str, float]]:
    """Rounds of ``ns`` devices against a cluster of ``volumes`` volume servers (each on an
    emulated host of ``limits``, or all on this one with None); what each server took at
    the end goes into ``placed``."""
    from s3_cluster import Cluster
    prefix = f"fleet{secrets.token_hex(4)}"
    ids = [{"name": f"device-{s['idx']}", "actions": device_actions(BUCKET, prefix, s["device"]),
            "credentials": [{"accessKey": s["access"], "secretKey": s["secret"]}]}
           for s in specs]
    tag = "netns" if limits else "shared"
    out: dict[str, dict[str, float]] = {}
    with Cluster(volumes, ids, limits) as cluster:
        t = time.monotonic()
        workers = Workers(procs, {"endpoint": cluster.endpoint, "prefix": prefix,
                                  "devices": specs, "inflight": inflight,
                                  "work": str(work / f"state-{tag}-v{volumes}")})
        print(f"  [{tag}] {volumes} volume server(s): {len(specs)} device clients ready in "
              f"{time.monotonic() - t:.1f} s", file=log, flush=True)
        try:
            for n in ns:
                devices = list(range(n))
                first, results = measured_round(workers, cluster,
                                                {"vm": f"n{n}", "devices": devices})
                assert all(r["bytes"] > 0 for r in results), "a sync uploaded nothing"
                workers.ask({"change": True, "devices": devices})
                incr, _ = measured_round(workers, cluster, {"vm": f"n{n}", "devices": devices})
                out[f"v{volumes}_n{n}"] = first
                out[f"v{volumes}_n{n}_incr"] = incr
                links = ", ".join(f"{k[5:-4]} {v}" for k, v in first.items()
                                  if k.startswith("link_") and k.endswith("_use"))
                print(f"  [{tag}] {volumes} vol, N={n}: initial {first['mib_s']} MiB/s "
                      f"p95 {first['p95_s']} s (done {first['p95_done_s']} s), "
                      f"{first['requests_per_sync']} req/sync; incremental p95 "
                      f"{incr['p95_s']} s, {incr['requests_per_sync']} req/sync; cores busy "
                      f"{first['cores_busy']}, idle {first['cpu_idle_s']} s (weed "
                      f"{first['cpu_weed_s']} s, clients {first['cpu_clients_s']} s, others "
                      f"{first['cpu_others_s']} s)" + (f"; link use {links}" if links else ""),
                      file=log, flush=True)
            servers = cluster.servers()
            placed[f"v{volumes}"] = servers
            print(f"  [{tag}] {volumes} vol: what each server took {json.dumps(servers)}",
                  file=log, flush=True)
        finally:
            workers.close()
    return out


def summary(rounds: dict[str, dict[str, float]], placed: dict[str, Any], top: int,
            suffix: str) -> dict[str, Any]:
    """The flat keys of one set of rounds (1 and 2 volume servers), each ending in
    ``suffix``."""
    flat: dict[str, Any] = {}
    for name, r in rounds.items():
        for k in ("mib_s", "p95_s", "p95_done_s", "requests_per_sync"):
            flat[f"fleet_{name}_{k}{suffix}"] = r[k]
    one, two = rounds[f"v1_n{top}"], rounds[f"v2_n{top}"]
    flat[f"scale_1_to_2{suffix}"] = round(two["mib_s"] / one["mib_s"], 3) \
        if one["mib_s"] else None
    # the same, per CPU-second the SeaweedFS processes used: on one machine a second
    # volume server can only help if the store's CPU per MiB falls
    per_cpu = [r["mib"] / r["cpu_weed_s"] if r["cpu_weed_s"] else 0.0 for r in (one, two)]
    flat[f"scale_1_to_2_per_weed_cpu{suffix}"] = round(per_cpu[1] / per_cpu[0], 3) \
        if per_cpu[0] else None
    for v, r in (("v1", one), ("v2", two)):
        flat[f"fleet_{v}_n{top}_weed_mib_per_cpu_s{suffix}"] = \
            round(r["mib"] / r["cpu_weed_s"], 1) if r["cpu_weed_s"] else None
        flat[f"fleet_{v}_n{top}_others_cpu_share{suffix}"] = round(
            r["cpu_others_s"] / (r["cores_busy"] * r["wall_s"]), 3) \
            if r["wall_s"] and r["cores_busy"] else None
        flat[f"fleet_{v}_n{top}_idle_s{suffix}"] = r["cpu_idle_s"]
    for v, servers in placed.items():
        flat[f"fleet_{v}_volumes_per_server{suffix}"] = [s["volumes"] for s in servers.values()]
        flat[f"fleet_{v}_mib_per_server{suffix}"] = [
            round(int(s["volume_bytes"]) / MIB, 1) for s in servers.values()]
    flat[f"fleet_servers{suffix}"] = placed
    flat[f"fleet_rounds{suffix}"] = rounds
    return flat


MODES = ("netns", "shared")


def fleet(ns: list[int], disk_mib: int, procs: int, inflight: int,
          limits: HostLimits, modes: tuple[str, ...] = MODES, log: Any = sys.stdout
          ) -> dict[str, Any]:
    """The fleet rounds against 1 and then 2 volume servers, for each of ``modes``:
    ``netns``, each volume server on an emulated host of ``limits`` (the figures' keys as
    they are, ``scale_1_to_2``), and ``shared``, all on this machine unconstrained (the
    keys end in ``_shared_host``)."""
    work = Path(tempfile.mkdtemp(prefix="vmbench-fleet-"))
    top = max(ns)
    flat: dict[str, Any] = {"fleet_disk_mib": disk_mib, "fleet_procs": procs,
                            "fleet_inflight": procs * inflight,
                            "fleet_host_mbit": limits.mbit, "fleet_host_cpus": limits.cpus,
                            "scale_1_to_2": None}
    try:
        specs = []
        for i in range(top):
            key = crypto.Ed25519PrivateKey.generate()
            disk = work / f"disk{i}.raw"
            make_disk(disk, disk_mib)
            specs.append({"idx": i, "key": key.private_bytes_raw().hex(),
                          "seed": secrets.token_bytes(32).hex(),
                          "device": crypto.key_id(key.public_key()), "disk": str(disk),
                          "access": f"VMCDEV{i:05d}{secrets.token_hex(4).upper()}",
                          "secret": secrets.token_hex(20)})
        for mode in modes:
            where = f"on emulated hosts of {limits.describe()}" if mode == "netns" \
                else "on this machine, unconstrained"
            print(f"fleet, volume servers {where}:", file=log, flush=True)
            rounds: dict[str, dict[str, float]] = {}
            placed: dict[str, Any] = {}
            for volumes in (1, 2):  # (the incremental rounds changed some disks: as random)
                rounds.update(run_fleet(volumes, ns, specs, procs, inflight, work, log,
                                        placed, limits if mode == "netns" else None))
            flat.update(summary(rounds, placed, top, "" if mode == "netns" else "_shared_host"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return flat


if __name__ == "__main__" and "--worker" in sys.argv:
    worker_main()
