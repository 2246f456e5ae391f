#!/usr/bin/env python3
"""Benchmark: how fast vmclient-powerd pauses and resumes every VM around sleep.

Real domains on the real libvirtd, the real daemon on a private system bus with
dbusmock's logind (the test set-up: run `make setup daemons` first).  For each
round it emits PrepareForSleep(true) and measures until every VM is paused and
the delay lock is released, then PrepareForSleep(false) until every VM runs.
Baselines in the same run: a plain sequential virDomainSuspend/Resume loop over
the same domains, and the daemon with a single VM.

    python bench/power.py --vms 8 --rounds 10

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests"),
                str(ROOT / "python-services" / "src")]

import libvirt
from fixtures_bus import private_system_bus
from fixtures_virt import domains
from powerd_harness import Logind, PowerDaemon, wait_for

RUNNING, PAUSED = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def daemon_rounds(bus, logind: Logind, vms, names: list[str], rounds: int) -> tuple[list, list]:
    work = Path(tempfile.mkdtemp(prefix="vmclient-bench-"))
    d = PowerDaemon(bus, None, work, f'[vms]\nname_prefix = "{vms.prefix}-{len(names)}-"\n'
                    "[shutdown]\nsave = false\n").start()
    doms = [vms.conn.lookupByName(n) for n in names]
    pause, resume = [], []
    try:
        for _ in range(rounds):
            wait_for(lambda: logind.holds("sleep", "delay"), 10, "sleep lock held")
            t0 = time.perf_counter()
            logind.prepare_for_sleep(True)
            wait_for(lambda: not logind.holds("sleep", "delay"), 10, "lock released",
                     interval=0.0005)
            pause.append((time.perf_counter() - t0) * 1000)
            assert all(dom.state()[0] == PAUSED for dom in doms), "lock released early"
            t0 = time.perf_counter()
            logind.prepare_for_sleep(False)
            wait_for(lambda: all(dom.state()[0] == RUNNING for dom in doms), 10, "running",
                     interval=0.0005)
            resume.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    finally:
        d.stop()
    return pause, resume


def sequential_rounds(vms, names: list[str], rounds: int) -> tuple[list, list]:
    doms = [vms.conn.lookupByName(n) for n in names]
    pause, resume = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for dom in doms:
            dom.suspend()
        pause.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        for dom in doms:
            dom.resume()
        resume.append((time.perf_counter() - t0) * 1000)
    return pause, resume


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vms", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    with private_system_bus() as bus, domains(f"vmbench-{uuid.uuid4().hex[:6]}") as vms:
        logind = Logind(bus, bus.spawn_mock("logind_vmclient",
                                            {"InhibitDelayMaxUSec": 10_000_000}))
        many = [vms.create(f"{args.vms}-{i}").name() for i in range(args.vms)]
        one = [vms.create(f"1-{0}").name()]
        seq_pause, seq_resume = sequential_rounds(vms, many, args.rounds)
        pause, resume = daemon_rounds(bus, logind, vms, many, args.rounds)
        one_pause, one_resume = daemon_rounds(bus, logind, vms, one, args.rounds)
    result = {
        "vms": args.vms,
        "rounds": args.rounds,
        "kvm": vms.virt == "kvm",
        "pause_p50_ms": p50(pause),
        "resume_p50_ms": p50(resume),
        "sequential_pause_p50_ms": p50(seq_pause),
        "sequential_resume_p50_ms": p50(seq_resume),
        "single_vm_pause_p50_ms": p50(one_pause),
        "single_vm_resume_p50_ms": p50(one_resume),
        "ratio": round(p50(pause) / p50(seq_pause), 3),
        "pause_vs_single_vm": round(p50(pause) / p50(one_pause), 3),
    }
    print(f"daemon pause {result['pause_p50_ms']} ms / sequential "
          f"{result['sequential_pause_p50_ms']} ms for {args.vms} VMs; one VM "
          f"{result['single_vm_pause_p50_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
