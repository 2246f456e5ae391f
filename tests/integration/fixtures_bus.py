"""A private system bus with the real policy rules, and dbusmock peers on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dbus

from testlib import DATA, need, stop_processes

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Modelled on Debian's /usr/share/dbus-1/system.conf: deny by default, then our
# real policy file from python-services/data, then what the mocks need.
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
    <!-- the dbusmock peers (logind, polkitd, UPower, NetworkManager) as
         their real policies allow -->
    <allow send_destination="org.freedesktop.login1"/>
    <allow send_destination="org.freedesktop.PolicyKit1"/>
    <allow send_destination="org.freedesktop.UPower"/>
    <allow send_destination="org.freedesktop.NetworkManager"/>
  </policy>
  <policy user="root">
    <allow own="*"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <includedir>{policy_dir}</includedir>
</busconfig>
"""


class PrivateSystemBus:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vmclient-bus-"))
        self.socket = self.dir / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        conf = self.dir / "system.conf"
        conf.write_text(BUS_CONF.format(socket=self.socket,
                                        policy_dir=DATA / "dbus-1" / "system.d"))
        self.proc = subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--nopidfile",
             "--print-address=1"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError("dbus-daemon did not start")
        os.chmod(self.dir, 0o755)  # unprivileged test callers must reach the socket
        self.mocks: list[subprocess.Popen[bytes]] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def connection(self) -> dbus.bus.BusConnection:
        return dbus.bus.BusConnection(self.address)

    def spawn_mock(self, template: str, parameters: dict[str, object] | None = None) -> dbus.Interface:
        """Start a dbusmock server from ``template`` (stock name or file) and return its Mock iface."""
        import dbusmock

        path = str(TEMPLATES / f"{template}.py") if (TEMPLATES / f"{template}.py").exists() \
            else template
        module = dbusmock.mockobject.load_module(path)
        args = [sys.executable, "-m", "dbusmock", "--system", "--template", path]
        if parameters:
            import json

            args += ["--parameters", json.dumps(parameters)]
        proc = subprocess.Popen(args, env=self.env(), stdout=subprocess.DEVNULL)
        self.mocks.append(proc)
        conn = self.connection()
        deadline = time.monotonic() + 10
        while not conn.name_has_owner(module.BUS_NAME):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dbusmock {template} did not start")
            time.sleep(0.02)
        return dbus.Interface(conn.get_object(module.BUS_NAME, module.MAIN_OBJ),
                              dbusmock.MOCK_IFACE)

    def stop(self) -> None:
        stop_processes([*self.mocks, self.proc])
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def private_system_bus() -> Iterator[PrivateSystemBus]:
    need(shutil.which("dbus-daemon") is not None, "dbus-daemon is not installed")
    bus = PrivateSystemBus()
    try:
        yield bus
    finally:
        bus.stop()
