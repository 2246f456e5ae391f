#!/usr/bin/env python3
"""Benchmark: the shell's switch latency and its idle footprint.

The test set-up (run `make setup daemons` first): a private system bus with
dbusmock's polkitd, the real vmclient-provd, two echo guests (tests/integration/
echo_guest.py), Weston's headless backend and vmclient-shell on it as uid nobody
(tests/integration/shell_driver.py).  Each round presses Super+Tab and measures
until GTK has painted the frame that shows the other VM (the compositor puts it
on screen at its next repaint, within one refresh).  Then the shell idles and
its RSS and CPU are read from /proc.  Then a third guest animates its screen
(a cell changes every 10 ms): the shell shows it and Weston's protocol log
(``weston-debug proto``) counts the shell's surface commits, each one a new
picture on screen; then the shell stops and ``virt-viewer --attach`` (the
remote-viewer of libvirt domains, which also opens the display through
virDomainOpenGraphicsFD) shows the same guest, counted the same way.  The two
clients take turns (``--pairs``: shell, viewer, shell, viewer, ...) and the
ratio is of their sums: on a machine shared with other work the load changes
within seconds, and one window each measured the load as much as the clients
(ratios of 0.79 and 1.19 in two runs of the same code).  Each client's CPU
while it was counted and the load average are reported with it.

    python bench/display.py --rounds 30

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
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


COMMIT = re.compile(r"client (0x[0-9a-f]+) rq wl_surface@(\d+)\.commit\(\)")


def counted(weston: Weston, seconds: float, pid: int) -> tuple[float, float]:
    """The busiest surface's commits per second, from Weston's protocol log (one
    surface: a viewer's toolbar or cursor on surfaces of their own do not count), and
    the CPU % of the client ``pid`` meanwhile."""
    out = Path(tempfile.mkdtemp(prefix="vmclient-proto-"))
    os.chown(out, weston.uid, weston.uid)
    log = out / "proto.log"
    with log.open("wb") as f:
        p = subprocess.Popen(["setpriv", f"--reuid={weston.uid}", f"--regid={weston.uid}",
                              "--clear-groups", "weston-debug", "proto"],
                             env=weston.env(), stdout=f, stderr=subprocess.DEVNULL)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu = (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100
        p.send_signal(signal.SIGTERM)
        p.wait(10)
    counts = collections.Counter(m.groups() for m in
                                 COMMIT.finditer(log.read_text(errors="replace")))
    shutil.rmtree(out, ignore_errors=True)
    return max(counts.values(), default=0) / seconds, cpu


def wait_shown(shell: ShellUnderTest, vm: str | None = None, n_running: int = 2) -> None:
    deadline = time.monotonic() + 60
    while True:
        st = shell.ask("state")
        running = [v for v in st["vms"] if v[2] == "running"]
        if st["display"] is not None and len(running) >= n_running and \
                (vm is None or st["current"] == vm):
            return
        if time.monotonic() > deadline:
            raise SystemExit("the shell did not show the VMs:\n" + shell.log())
        if vm is not None and len(running) >= n_running:
            shell.ask("switch")
        time.sleep(0.3)


def switch_rounds(shell: ShellUnderTest, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        out.append(float(shell.ask("switch")["ms"]))
        time.sleep(0.1)
    return out


def idle(pid: int, seconds: float) -> tuple[float, float]:
    """(RSS MiB, CPU %) of the shell doing nothing."""
    time.sleep(2)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return rss_mib(pid), (cpu_seconds(pid) - c0) / (time.monotonic() - t0) * 100


def viewer_rate(weston: Weston, vm: str, home: Path, seconds: float) -> tuple[float, float]:
    viewer = subprocess.Popen(
        ["virt-viewer", "--attach", "--full-screen", "-c", "qemu:///system", vm],
        env={**weston.env(), "GDK_BACKEND": "wayland", "HOME": str(home)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4)
        return counted(weston, seconds, viewer.pid)
    finally:
        viewer.terminate()
        viewer.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idling measured")
    ap.add_argument("--updates", type=float, default=5.0,
                    help="seconds of an animating guest measured per client and turn")
    ap.add_argument("--pairs", type=int, default=3,
                    help="turns of each client counting the animating guest's updates")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vmclient-bench-"))
    with private_system_bus() as bus:
        bus.spawn_mock("polkitd").SetAllowed([ACTION])
        provd = ProvDaemon(bus, work).start()
        prefix = f"vmcb-{uuid.uuid4().hex[:6]}"
        try:
            with echo_guests(prefix) as guests:
                for name, kind, seed in (("a", "business", 0), ("b", "private", 1)):
                    guests.wait_painted(guests.create(name, kind, seed, name.upper()))
                weston = Weston()
                shell = ShellUnderTest(weston, bus, work, prefix + "-", groups=("vmclient",))
                turns: list[tuple[float, float, float, float]] = []
                try:
                    wait_shown(shell)
                    time.sleep(2)  # both sessions connected, first frames in
                    switch = switch_rounds(shell, args.rounds)
                    rss, idle_cpu = idle(shell.proc.pid, args.idle)
                    c = guests.create("c", "private", 2, "C", animate=True)
                    guests.wait_painted(c)
                    for turn in range(args.pairs):
                        if turn:
                            shell = ShellUnderTest(weston, bus, work, prefix + "-",
                                                   groups=("vmclient",))
                        wait_shown(shell, c, 3)
                        time.sleep(2)
                        shell_turn = counted(weston, args.updates, shell.proc.pid)
                        shell.stop()
                        turns.append((*shell_turn, *viewer_rate(weston, c, work, args.updates)))
                finally:
                    shell.stop()
                    weston.stop()
        finally:
            provd.stop()
    shell_rate = statistics.fmean(t[0] for t in turns)
    rv_rate = statistics.fmean(t[2] for t in turns)
    result = {
        "rounds": args.rounds,
        "switch_p50_ms": round(statistics.median(switch), 1),
        "switch_max_ms": round(max(switch), 1),
        "idle_rss_mib": round(rss, 1),
        "idle_cpu_percent": round(idle_cpu, 2),
        "updates_per_s": round(shell_rate, 1),
        "remote_viewer_updates_per_s": round(rv_rate, 1),
        "updates_ratio_vs_remote_viewer": round(shell_rate / rv_rate, 2) if rv_rate else None,
        # each turn: the shell's updates/s and CPU %, the viewer's updates/s and CPU %
        "updates_turns": [[round(x, 1) for x in t] for t in turns],
        "updates_shell_cpu_percent": round(statistics.fmean(t[1] for t in turns), 1),
        "updates_viewer_cpu_percent": round(statistics.fmean(t[3] for t in turns), 1),
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }
    print(f"switch p50 {result['switch_p50_ms']} ms (max {result['switch_max_ms']} ms), "
          f"idle RSS {result['idle_rss_mib']} MiB, idle CPU {result['idle_cpu_percent']} %, "
          f"updates {result['updates_per_s']}/s vs virt-viewer "
          f"{result['remote_viewer_updates_per_s']}/s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
