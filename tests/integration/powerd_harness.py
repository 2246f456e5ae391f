"""The power daemon under test and its logind peer, as the tests and bench/power.py drive them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dbus
from fixtures_bus import PrivateSystemBus
from fixtures_udev import SimulatedLaptop
from fixtures_virt import scaled

from testlib import SERVICES
from vmclient.power.policy import HoldAction, Phase

BUS_NAME = "org.vmclient.VMClient1"
POWER_PATH = "/org/vmclient/VMClient1/Power"
POWER_IFACE = "org.vmclient.VMClient1.Power"
LOGIND_IFACE = "org.freedesktop.login1.Manager"


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll ``pred`` until it is true; ``timeout`` is for KVM guests (longer under TCG)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class PowerDaemon:
    """vmclient-powerd as a child process on the private bus and the umockdev testbed."""

    def __init__(self, bus: PrivateSystemBus, laptop: SimulatedLaptop | None, workdir: Path,
                 config: str = "", runtime_dir: Path | None = None) -> None:
        """``runtime_dir``: the laptop's /run/vmclient/power (default: in ``workdir``; the
        bench gives a tmpfs, as on the laptop)."""
        self.bus = bus
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.runtime_dir = runtime_dir or workdir / "run"
        self.config = workdir / "power.toml"
        self.config.write_text(f'state_dir = "{self.state_dir}"\n'
                               f'runtime_dir = "{self.runtime_dir}"\n' + config)
        self.log_path = workdir / "powerd.log"
        self.env = {**bus.env(), **(laptop.env() if laptop else {}),
                    "PYTHONPATH": str(SERVICES / "src")}
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn = bus.connection()

    def start(self, wait: bool = True) -> PowerDaemon:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vmclient.power.daemon", "--config", str(self.config),
             "--debug"], env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            try:
                wait_for(lambda: self.conn.name_has_owner(BUS_NAME) or self.proc.poll() is not None,
                         30, "vmclient-powerd on the bus")
            finally:
                if self.proc.poll() is not None:
                    raise AssertionError(f"vmclient-powerd exited {self.proc.returncode}:\n"
                                         + self.log())
        return self

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("vmclient-powerd did not stop on SIGTERM:\n"
                                     + self.log()) from None
        self._log.close()
        wait_for(lambda: not self.conn.name_has_owner(BUS_NAME), 5, "the bus name released")
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def props(self) -> dict[str, Any]:
        obj = self.conn.get_object(BUS_NAME, POWER_PATH)
        return obj.GetAll(POWER_IFACE, dbus_interface="org.freedesktop.DBus.Properties")

    def call(self, method: str, timeout: float = 30) -> list[str]:
        obj = self.conn.get_object(BUS_NAME, POWER_PATH)
        return [str(x) for x in obj.get_dbus_method(method, POWER_IFACE)(timeout=timeout)]

    def paused_by_us(self) -> dict[str, str]:
        """VM name -> how powerd holds it (``PausedByUs``' action, in words: pause, s3, save)."""
        return {str(n): HoldAction(int(a)).label for n, a in self.props()["PausedByUs"]}


class PowerDaemons:
    """The daemons a test starts (``daemons(config, laptop)``), each stopped at the end with
    SIGTERM as systemd stops it, and each log then checked to hold no traceback.

    libvirtd must still be there for that stop (the fixtures the daemon uses are torn down
    after it): a daemon stopped without it waits for libvirtd to come back before it gives
    up saving the VMs (30 s a test), which the stop's log tells."""

    def __init__(self, bus: PrivateSystemBus, workdir: Path) -> None:
        self.bus = bus
        self.workdir = workdir
        self.started: list[PowerDaemon] = []

    def __call__(self, config: str = "", laptop: SimulatedLaptop | None = None,
                 start: bool = True) -> PowerDaemon:
        d = PowerDaemon(self.bus, laptop, self.workdir, config)
        self.started.append(d)
        return d.start() if start else d

    def settle(self, timeout: float = 30) -> None:
        """Until no running daemon is pausing, resuming or saving VMs (or ``timeout``): the
        test's domains are destroyed next, and destroying one its daemon is restoring can
        crash libvirtd (see :func:`fixtures_virt.wait_started`).  A daemon a test left hung
        is not waited for beyond ``timeout``."""
        busy = {Phase.PAUSING, Phase.RESUMING, Phase.SAVING}

        def settled(d: PowerDaemon) -> bool:
            try:
                return int(d.props()["State"]) not in busy
            except dbus.DBusException:
                return True  # not on the bus (stopping, or never started)

        for d in self.started:
            if d.proc is not None and d.proc.poll() is None:
                with contextlib.suppress(AssertionError):
                    wait_for(lambda d=d: settled(d), timeout, "the daemon settled", 0.05)

    def close(self) -> None:
        problems: list[str] = []
        for d in self.started:
            if d.proc is not None and d.proc.poll() is None:
                before = len(d.log())
                try:
                    d.stop()
                except AssertionError as exc:
                    problems.append(str(exc))
                    continue
                if "is not available" in d.log()[before:]:
                    problems.append("libvirtd was gone when the test's vmclient-powerd "
                                    "stopped:\n" + d.log()[before:])
            if "Traceback" in d.log():
                problems.append(d.log())
        assert not problems, "\n".join(problems)


class Logind:
    """The dbusmock logind peer, seen from the test."""

    def __init__(self, bus: PrivateSystemBus, mock: dbus.Interface) -> None:
        self.mock = mock
        conn = bus.connection()
        self.obj = conn.get_object("org.freedesktop.login1", "/org/freedesktop/login1")

    def inhibitors(self) -> list[tuple[str, str, str, str]]:
        return [(str(w), str(who), str(why), str(m)) for w, who, why, m, *_ in
                self.obj.ListInhibitors(dbus_interface=LOGIND_IFACE)]

    def holds(self, what: str, mode: str) -> bool:
        return any(w == what and m == mode and who == "vmclient-powerd"
                   for w, who, _, m in self.inhibitors())

    def released_at(self) -> float:
        """``time.monotonic()`` when the mock saw the last inhibitor's fd closed."""
        return float(self.obj.Get(LOGIND_IFACE, "TestReleasedAt",
                                  dbus_interface="org.freedesktop.DBus.Properties"))

    def prepare_for_sleep(self, start: bool) -> None:
        self.mock.EmitSignal(LOGIND_IFACE, "PrepareForSleep", "b", [start])

    def announce_sleep(self, start: bool) -> float:
        """PrepareForSleep(start) as logind sends it; returns the ``time.monotonic()`` at
        which the mock sent it (not when this call was made)."""
        self.obj.TestAnnounceSleep(start, dbus_interface=LOGIND_IFACE)
        return float(self.obj.Get(LOGIND_IFACE, "TestAnnouncedAt",
                                  dbus_interface="org.freedesktop.DBus.Properties"))

    def set_inhibit_delay_max(self, seconds: float) -> None:
        """logind's InhibitDelayMaxUSec (powerd reads it when it starts)."""
        self.obj.Set(LOGIND_IFACE, "InhibitDelayMaxUSec", dbus.UInt64(int(seconds * 1e6)),
                     dbus_interface="org.freedesktop.DBus.Properties")

    def suspend_count(self) -> int:
        return int(self.obj.Get(LOGIND_IFACE, "TestSuspendCount",
                                dbus_interface="org.freedesktop.DBus.Properties"))


