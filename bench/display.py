#!/usr/bin/env python3
"""Benchmark: the shell's switch latency and its idle footprint.

The test set-up (run `make setup daemons` first): a private system bus with
dbusmock's polkitd, the real vmclient-provd, two echo guests (tests/integration/
echo_guest.py), Weston's headless backend and vmclient-shell on it as uid nobody
(tests/integration/shell_driver.py).  Each round presses Super+Tab and measures
until GTK has painted the frame that shows the other VM (the compositor puts it
on screen at its next repaint, within one refresh).  Then the shell idles and
its RSS and CPU are read from /proc.

    python bench/display.py --rounds 30

Not measured yet: display updates per second of an animating guest through the
shell against remote-viewer (printed as null).  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests"),
                str(ROOT / "python-services" / "src")]

from echo_guest import echo_guests
from fixtures_bus import private_system_bus
from provd_harness import ProvDaemon
from shell_harness import ShellUnderTest, Weston

ACTION = "org.vmclient.VMClient1.open-display"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idling measured")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmclient-bench-"))
    with private_system_bus() as bus:
        bus.spawn_mock("polkitd").SetAllowed([ACTION])
        provd = ProvDaemon(bus, work).start()
        prefix = f"vmcb-{uuid.uuid4().hex[:6]}"
        try:
            with echo_guests(prefix) as guests:
                a = guests.create("a", "business", 0, "A")
                b = guests.create("b", "private", 1, "B")
                guests.wait_painted(a)
                guests.wait_painted(b)
                weston = Weston()
                shell = ShellUnderTest(weston, bus, work, prefix + "-")
                try:
                    deadline = time.monotonic() + 60
                    while shell.ask("state")["display"] is None or len(
                            [v for v in shell.ask("state")["vms"] if v[2] == "running"]) < 2:
                        if time.monotonic() > deadline:
                            raise SystemExit("the shell did not show the VMs:\n" + shell.log())
                        time.sleep(0.2)
                    time.sleep(2)  # both sessions connected, first frames in
                    switch = []
                    for _ in range(args.rounds):
                        r = shell.ask("switch")
                        switch.append(float(r["ms"]))
                        time.sleep(0.1)
                    pid = shell.proc.pid
                    time.sleep(2)
                    c0, t0 = cpu_seconds(pid), time.monotonic()
                    time.sleep(args.idle)
                    idle_cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
                    rss = rss_mib(pid)
                finally:
                    shell.stop()
                    weston.stop()
        finally:
            provd.stop()
    result = {
        "rounds": args.rounds,
        "switch_p50_ms": round(statistics.median(switch), 1),
        "switch_max_ms": round(max(switch), 1),
        "idle_rss_mib": round(rss, 1),
        "idle_cpu_percent": round(idle_cpu, 2),
        "updates_per_s": None,
        "remote_viewer_updates_per_s": None,
        "updates_ratio_vs_remote_viewer": None,
    }
    print(f"switch p50 {result['switch_p50_ms']} ms (max {result['switch_max_ms']} ms), "
          f"idle RSS {result['idle_rss_mib']} MiB, idle CPU {result['idle_cpu_percent']} %")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
