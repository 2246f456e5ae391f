#!/usr/bin/env python3
"""Benchmark: how fast vmclient-powerd pauses and resumes every VM around sleep.

Real domains on the real libvirtd, the real daemon on a private system bus with
dbusmock's logind (the test set-up: run `make setup daemons` first), its state
directory on the disk and its runtime directory on a tmpfs, as on the laptop.  For each
round the logind mock emits PrepareForSleep(true) and the bench measures from
that emission (the mock stamps it) until every VM is paused and the delay lock
is released, then PrepareForSleep(false) until every VM runs.
Baselines: a plain sequential virDomainSuspend/Resume loop over the same
domains, the daemon with a single VM, and the floor of a parallel pause: the
bare virDomainSuspend calls issued all at once from threads over two
connections (as the daemon does, minus the daemon); with ``--save-rounds``, the ``save``
policy (managed save of every VM, in parallel) against a sequential
virDomainManagedSave/virDomainCreate loop.

Fair by construction: every guest boots a sector that halts its vCPU (no
SeaBIOS polling for a boot device eating the 2 cores), the run waits until
every vCPU is idle and then ``--settle`` seconds more, and the daemon and its
baselines alternate round by round on the same guests (which goes first turns
too).  The daemon's pause ends when the logind mock sees the delay lock's fd closed
(it stamps that time; the bench polls slowly), so no 1 ms D-Bus poll competes with
the daemon for the 2 cores while it is measured.

    python bench/power.py --vms 8 --rounds 10 --save-rounds 3

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests"),
                str(ROOT / "python-services" / "src")]

import libvirt
from fixtures_bus import private_system_bus
from fixtures_virt import domains
from powerd_harness import Logind, PowerDaemon, wait_for

from vmclient.host.files import mount_of

RUNNING, PAUSED, SHUTOFF = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                            libvirt.VIR_DOMAIN_SHUTOFF)


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def tmpfs() -> str | None:
    """A tmpfs to hold the daemon's runtime directory, as /run on the laptop (None: none)."""
    with open("/proc/self/mounts") as f:
        mounts = f.read()
    for d in ("/run", "/dev/shm"):
        if os.path.isdir(d) and mount_of(os.path.realpath(d), mounts)[1] == "tmpfs":
            return d
    return None


class Bench:
    def __init__(self, bus, logind: Logind, vms, names: list[str], config: str = "") -> None:
        self.work = Path(tempfile.mkdtemp(prefix="vmclient-bench-"))
        self.run = Path(tempfile.mkdtemp(prefix="vmclient-bench-", dir=tmpfs()))
        prefix = names[0].rsplit("-", 1)[0] + "-"
        self.d = PowerDaemon(bus, None, self.work, f'[vms]\nname_prefix = "{prefix}"\n'
                             f"save_timeout_s = 300\n{config}"
                             "[shutdown]\nsave = false\nrestore_on_start = false\n"
                             "[sleep]\nmax_delay_s = 60\n", runtime_dir=self.run).start()
        self.logind = logind
        self.doms = [vms.conn.lookupByName(n) for n in names]

    def round(self, asleep: int) -> tuple[float, float, float]:
        """(ms from logind's PrepareForSleep until every VM is ``asleep`` and the lock
        released, ms until all run again, the first counted from this process's call)."""
        wait_for(lambda: self.logind.holds("sleep", "delay"), 10, "sleep lock held")
        t_call = time.monotonic()
        # The mock stamps when it sends the signal and when the lock's fd closes (the
        # same clock): the daemon is timed from logind's announcement, as the loop is
        # timed from its first call, and a slow poll here takes no CPU from the daemon
        # while it works, as nothing polls the sequential loop either.
        announced = self.logind.announce_sleep(True)
        wait_for(lambda: not self.logind.holds("sleep", "delay"), 120, "lock released",
                 interval=0.05)
        released = self.logind.released_at()
        assert released > announced >= t_call, "no release stamped for this round"
        pause = (released - announced) * 1000
        from_call = (released - t_call) * 1000
        assert all(dom.state()[0] == asleep for dom in self.doms), "lock released early"
        t0 = time.perf_counter()
        self.logind.prepare_for_sleep(False)
        wait_for(lambda: all(dom.state()[0] == RUNNING for dom in self.doms), 300, "running",
                 interval=0.001)
        return pause, (time.perf_counter() - t0) * 1000, from_call

    def stop(self) -> None:
        self.d.stop()
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)


def sequential(doms, save: bool = False) -> tuple[float, float]:
    t0 = time.perf_counter()
    for dom in doms:
        dom.managedSave(0) if save else dom.suspend()
    pause = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    for dom in doms:
        dom.create() if save else dom.resume()
    return pause, (time.perf_counter() - t0) * 1000


class Parallel:
    """The bare suspends at once, from threads, over two connections of their own."""

    def __init__(self, doms) -> None:
        self.conns = [libvirt.open(doms[0].connect().getURI()) for _ in range(2)]
        self.doms = [self.conns[i % 2].lookupByUUIDString(d.UUIDString())
                     for i, d in enumerate(doms)]
        self.pool = ThreadPoolExecutor(len(doms))

    def round(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        list(self.pool.map(lambda d: d.suspend(), self.doms))
        pause = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        list(self.pool.map(lambda d: d.resume(), self.doms))
        return pause, (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.pool.shutdown()
        self.doms.clear()
        for c in self.conns:
            c.close()


def alternate(bench: Bench, rounds: int, save: bool = False) -> dict[str, list[float]]:
    """``rounds`` of the daemon, of the sequential loop and (pause only) of the bare parallel
    calls, alternated on the same guests (the order turns round by round)."""
    out: dict[str, list[float]] = {k: [] for k in ("pause", "resume", "seq_pause",
                                                   "seq_resume", "par_pause",
                                                   "pause_call")}
    kinds = ["daemon", "sequential"] + ([] if save else ["parallel"])
    par = None if save else Parallel(bench.doms)
    try:
        for r in range(rounds):
            for kind in kinds[r % len(kinds):] + kinds[:r % len(kinds)]:
                time.sleep(0.2)  # the previous round's tail (clock syncs, logs) settles
                if kind == "sequential":
                    p, q = sequential(bench.doms, save)
                    out["seq_pause"].append(p)
                    out["seq_resume"].append(q)
                elif kind == "parallel":
                    assert par is not None
                    out["par_pause"].append(par.round()[0])
                else:
                    p, q, c = bench.round(SHUTOFF if save else PAUSED)
                    out["pause"].append(p)
                    out["resume"].append(q)
                    out["pause_call"].append(c)
    finally:
        if par is not None:
            par.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--save-rounds", type=int, default=3,
                    help="rounds with the save policy (seconds each; 0: none)")
    ap.add_argument("--settle", type=float, default=15.0,
                    help="seconds to wait once every guest idles")
    args = ap.parse_args()
    with private_system_bus() as bus, domains(f"vmbench-{uuid.uuid4().hex[:6]}") as vms:
        logind = Logind(bus, bus.spawn_mock("logind_vmclient",
                                            {"InhibitDelayMaxUSec": 600_000_000}))
        many = [vms.create(f"{args.vms}-{i}", halt=True).name() for i in range(args.vms)]
        one = [vms.create("1-0", halt=True).name()]
        for n in many + one:
            vms.wait_idle(n)
        time.sleep(args.settle)
        b = Bench(bus, logind, vms, many)
        try:
            m = alternate(b, args.rounds)
        finally:
            b.stop()
        b = Bench(bus, logind, vms, one)
        try:
            s1 = alternate(b, args.rounds)
        finally:
            b.stop()
        sv: dict[str, list[float]] = {}
        if args.save_rounds:
            b = Bench(bus, logind, vms, many, 'default_policy = "save"\n')
            try:
                sv = alternate(b, args.save_rounds, save=True)
            finally:
                b.stop()
    result = {
        "vms": args.vms,
        "rounds": args.rounds,
        "kvm": vms.virt == "kvm",
        "pause_p50_ms": p50(m["pause"]),
        "pause_from_call_p50_ms": p50(m["pause_call"]),
        "resume_p50_ms": p50(m["resume"]),
        "sequential_pause_p50_ms": p50(m["seq_pause"]),
        "sequential_resume_p50_ms": p50(m["seq_resume"]),
        "single_vm_pause_p50_ms": p50(s1["pause"]),
        "single_vm_resume_p50_ms": p50(s1["resume"]),
        "single_vm_sequential_pause_p50_ms": p50(s1["seq_pause"]),
        "parallel_pause_p50_ms": p50(m["par_pause"]),
        "floor_vs_single_vm": round(p50(m["par_pause"]) / p50(s1["seq_pause"]), 3),
        "ratio": round(p50(m["pause"]) / p50(m["seq_pause"]), 3),
        "ratio_from_call": round(p50(m["pause_call"]) / p50(m["seq_pause"]), 3),
        "pause_vs_single_vm": round(p50(m["pause"]) / p50(s1["pause"]), 3),
        # the daemon against the floor no pause of every VM can beat: the bare calls at once
        "pause_vs_floor": round(p50(m["pause"]) / p50(m["par_pause"]), 3),
    }
    if sv:
        result.update({
            "save_rounds": args.save_rounds,
            "save_p50_ms": p50(sv["pause"]),
            "sequential_save_p50_ms": p50(sv["seq_pause"]),
            "restore_p50_ms": p50(sv["resume"]),
            "sequential_restore_p50_ms": p50(sv["seq_resume"]),
            "save_ratio": round(p50(sv["pause"]) / p50(sv["seq_pause"]), 3),
        })
    print(f"daemon pause {result['pause_p50_ms']} ms / sequential "
          f"{result['sequential_pause_p50_ms']} ms for {args.vms} VMs (ratio {result['ratio']}); "
          f"one VM {result['single_vm_pause_p50_ms']} ms; the bare calls at once "
          f"{result['parallel_pause_p50_ms']} ms, one bare call "
          f"{result['single_vm_sequential_pause_p50_ms']} ms")
    if sv:
        print(f"save policy: daemon {result['save_p50_ms']} ms / sequential "
              f"{result['sequential_save_p50_ms']} ms (ratio {result['save_ratio']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
