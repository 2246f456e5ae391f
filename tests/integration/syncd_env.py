"""vmclient-syncd under test: a child process on the private bus, with its peers.

The daemon gets the synchronizer world of :mod:`sync_env` (the repository
directory, device A's keys, the VM's data key wrapped for device A the way
provisioning stores it) and dbusmock's logind, UPower and NetworkManager.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dbus
from fixtures_bus import PrivateSystemBus
from fixtures_virt import scaled
from powerd_harness import Logind, wait_for
from sync_env import World

from testlib import SERVICES, vmclientctl
from vmclient.host.files import write_private
from vmclient.store import crypto

NAME = "org.vmclient.VMClient1.Sync"
PATH = "/org/vmclient/VMClient1/Sync"
IFACE = NAME
PROPS = "org.freedesktop.DBus.Properties"
UPOWER = "org.freedesktop.UPower"
UPOWER_DEVICE = "org.freedesktop.UPower.Device"
DISPLAY = "/org/freedesktop/UPower/devices/DisplayDevice"
NM = "org.freedesktop.NetworkManager"


class Peers:
    """logind, UPower (on AC) and NetworkManager (not metered), as dbusmock serves them."""

    def __init__(self, bus: PrivateSystemBus) -> None:
        self.logind = Logind(bus, bus.spawn_mock("logind_vmclient",
                                                 {"InhibitDelayMaxUSec": 5_000_000}))
        bus.spawn_mock("upower", {"OnBattery": False})
        bus.spawn_mock("networkmanager")
        conn = bus.connection()
        dbus.Interface(conn.get_object(NM, "/org/freedesktop/NetworkManager"),
                       "org.freedesktop.DBus.Mock").AddProperty(
            NM, "Metered", dbus.UInt32(2))  # NM_METERED_NO; the stock template lacks it
        self.upower = conn.get_object(UPOWER, "/org/freedesktop/UPower")
        self.display = conn.get_object(UPOWER, DISPLAY)
        self.nm = conn.get_object(NM, "/org/freedesktop/NetworkManager")

    def battery(self, on_battery: bool, percent: float) -> None:
        self.upower.Set(UPOWER, "OnBattery", on_battery, dbus_interface=PROPS)
        self.display.Set(UPOWER_DEVICE, "Percentage", dbus.Double(percent), dbus_interface=PROPS)

    def metered(self, yes: bool) -> None:
        self.nm.Set(NM, "Metered", dbus.UInt32(1 if yes else 2), dbus_interface=PROPS)

    def network_state(self, state: int) -> None:
        """NMState: 20 disconnected, 70 connected-global."""
        self.nm.Set(NM, "State", dbus.UInt32(state), dbus_interface=PROPS)

    def syncd_holds_sleep_lock(self) -> bool:
        return any(who == "vmclient-syncd" and what == "sleep" and mode == "delay"
                   for what, who, _, mode in self.logind.inhibitors())


class SyncDaemon:
    def __init__(self, bus: PrivateSystemBus, w: World, workdir: Path, vms: list[str],
                 extra: str = "", manage: Path | None = None,
                 schedule: str = "enabled = false\n",
                 wrap: Callable[[list[str]], list[str]] = lambda cmd: cmd) -> None:
        """``wrap``: the daemon's command line as it is run (e.g. in the /etc overlay of
        shell_harness.PasswordSandbox, for SetPassword's chpasswd)."""
        self.wrap = wrap
        self.bus, self.w, self.workdir = bus, w, workdir
        device_dir, provision_dir = workdir / "device", workdir / "provision"
        write_private(device_dir / "signing.key", crypto.raw_private(w.a.signing))
        write_private(device_dir / "wrapping.key", crypto.raw_private(w.a.wrapping))
        for vm in vms:  # as provisioning's VMKeys stores it
            write_private(provision_dir / "keys" / f"{vm}.wrapped", crypto.wrap_key(
                w.a.wrapping.public_key(), w.keys[vm].secret, "data-key", f"vm:{vm}"))
        admin = workdir / "admin-key.pub"
        admin.write_bytes(crypto.raw_public(w.admin.public_key()))
        self.config = workdir / "sync.toml"
        self.config.write_text(
            f'state_dir = "{w.a.state}"\nprovision_dir = "{provision_dir}"\n'
            f'device_dir = "{device_dir}"\nscratch_dir = "{w.scratch}"\n'
            f'name_prefix = "{w.prefix}-"\n'
            f'[repository]\nlocation = "{w.repo_dir}"\nadmin_key = "{admin}"\n'
            "[schedule]\n" + schedule
            + "[host_updates]\nenabled = false\n"  # test_host_update.py drives RAUC
            + (f'[manage]\nstate_dir = "{manage}"\nimages_dir = "{workdir / "images"}"\n'
               if manage else "[manage]\nenabled = false\n") + extra)
        self.log_path = workdir / "syncd.log"
        self.env = {**bus.env(), "PYTHONPATH": str(SERVICES / "src")}
        self.conn = bus.connection()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SyncDaemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.wrap([sys.executable, "-m", "vmclient.sync.daemon", "--config",
                           str(self.config), "--debug"]), env=self.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.conn.name_has_owner(NAME) or self.proc.poll() is not None, 60,
                 "vmclient-syncd on the bus")
        assert self.proc.poll() is None, self.log()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("vmclient-syncd did not stop:\n" + self.log()) from None
        assert "Traceback" not in self.log(), self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def props(self) -> dict[str, Any]:
        return self.conn.get_object(NAME, PATH).GetAll(IFACE, dbus_interface=PROPS)

    def vm(self, name: str) -> dict[str, Any]:
        return {str(k): v for k, v in self.props()["VMs"][name].items()}

    def cli(self, *args: str, user: int | None = None, wait: bool = True
            ) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
        if wait:
            return vmclientctl("sync", *args, env=self.env, user=user, timeout=scaled(600))
        cmd = [sys.executable, "-m", "vmclient.cli.main", "sync", *args]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        return subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def as_json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.stdout, r.stderr
    return json.loads(r.stdout)
