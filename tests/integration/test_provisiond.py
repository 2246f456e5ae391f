# ruff: noqa: ASYNC220, ASYNC251  (blocking checks in tests are fine)
"""vmclient-provd on a private system bus with the shipped bus policy: methods, progress
properties, errors, permissions, introspection."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_virt import scaled
from provd_harness import NAME, PATH, call, ok
from provision_env import image_bytes, need_tools, provision_env, write_config

from testlib import INTERFACES, SERVICES, need, run, vmclientctl

pytestmark = pytest.mark.asyncio(loop_scope="session")

IFACE = NAME


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools("dbus-daemon")


def stranger_call(bus: PrivateSystemBus, member: str) -> str:
    """The D-Bus error a user outside the vmclient group gets (nobody, via setpriv)."""
    script = ("import dbus, sys\nb = dbus.bus.BusConnection(sys.argv[1])\n"
              f"try:\n    b.call_blocking({NAME!r}, {PATH!r}, {IFACE!r}, {member!r}, '', [])\n"
              "except dbus.DBusException as e:\n    print(e.get_dbus_name())\n")
    r = run(["/usr/bin/python3", "-c", script, bus.address], user=65534)
    return r.stdout.strip() + r.stderr


async def test_provd_install_progress_start_remove(system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    bus = system_bus
    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(160))
        config = write_config(env, tmp_path)
        log_path = tmp_path / "provd.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vmclient.provision.daemon", "--config", str(config),
                 "--debug"], stdout=log, stderr=subprocess.STDOUT,
                env={**bus.env(), "PYTHONPATH": str(SERVICES / "src")})
        client = await MessageBus(bus_address=bus.address).connect()
        try:
            deadline = time.monotonic() + 30
            while not ok(await call(client, "NameHasOwner", "s", [NAME], "org.freedesktop.DBus",
                                    "/org/freedesktop/DBus", "org.freedesktop.DBus"))[0]:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)

            # introspection equals the shipped XML
            (xml,) = ok(await call(client, "Introspect", iface="org.freedesktop.DBus.Introspectable"))
            live = ET.fromstring(xml).find(f"interface[@name='{IFACE}']")
            shipped = ET.parse(INTERFACES / f"{IFACE}.xml").getroot() \
                .find("interface")
            def members(el: ET.Element) -> set[str]:
                return {ET.tostring(c, encoding="unicode").replace(" ", "").strip()
                        for c in el}
            assert {m.get("name") for m in live} == {m.get("name") for m in shipped}
            for m in shipped:
                lm = live.find(f"*[@name='{m.get('name')}']")
                assert [(a.get("name"), a.get("type"), a.get("direction")) for a in m] == \
                       [(a.get("name"), a.get("type"), a.get("direction")) for a in lm]

            # progress arrives as PropertiesChanged while Install runs
            seen: list[dict[str, Any]] = []

            def on_signal(msg: Message) -> None:
                if msg.member == "PropertiesChanged" and msg.path == PATH:
                    seen.append({k: v.value for k, v in msg.body[1].items()})
            client.add_message_handler(on_signal)
            ok(await call(client, "AddMatch", "s",
                          [f"type='signal',path='{PATH}',member='PropertiesChanged'"],
                          "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus"))
            recipe = env.recipe(tmp_path, "bus").read_text()
            (vm,) = ok(await call(client, "Install", "s", [recipe]))
            assert vm == env.name("bus")
            phases = [s["Phase"] for s in seen if "Phase" in s]
            assert 3 in phases and 4 in phases and phases[-1] == 1, phases  # download, assemble, idle
            totals = [s["BytesTotal"] for s in seen if s.get("Phase") == 3]
            assert max(totals) > 0 and any(s["Rate"] > 0 for s in seen if s.get("Phase") == 3)

            assert stranger_call(bus, "List") == "org.freedesktop.DBus.Error.AccessDenied"
            (rows,) = ok(await call(client, "List"))
            assert [vm, "business", "shutoff", f"{env.prefix}-img", 1] in [list(r) for r in rows]
            again = await call(client, "Install", "s", [recipe])
            assert again.error_name == "org.vmclient.VMClient1.Error.Failed" and \
                "exists already" in again.body[0]
            bad = await call(client, "Install", "s", [recipe.replace("vcpus = 1", "vcpus = 0")])
            assert bad.error_name == "org.vmclient.VMClient1.Error.Config" and \
                "vcpus: 0 is outside 1..64" in bad.body[0]
            ok(await call(client, "Start", "s", [vm]))
            missing = await call(client, "Start", "s", ["no-such-vm"])
            assert missing.error_name == "org.vmclient.VMClient1.Error.VMNotFound"
            ok(await call(client, "Stop", "sb", [vm, True]))
            ok(await call(client, "Remove", "s", [vm]))
            (rows,) = ok(await call(client, "List"))
            assert vm not in [r[0] for r in rows]

            # vmclientctl vm … goes through the daemon and shows its progress
            def ctl(*args: str) -> subprocess.CompletedProcess[str]:
                return vmclientctl("vm", *args, env=bus.env(), timeout=scaled(240))
            r = ctl("install", str(env.recipe(tmp_path, "ctl")))
            assert r.returncode == 0, r.stderr
            assert f"{env.name('ctl')}: business VM, shutoff" in r.stdout
            assert "download" in r.stderr and "assemble" in r.stderr and "ETA" in r.stderr, \
                r.stderr
            r = ctl("list", "--json")
            assert {"name": env.name("ctl"), "kind": "business", "state": "shutoff",
                    "image": f"{env.prefix}-img", "image_version": 1} in json.loads(r.stdout)
            assert ctl("start", env.name("ctl")).returncode == 0
            def offered(line: str) -> list[str]:  # what Tab offers at the end of ``line``
                out = tmp_path / "completion"
                r = vmclientctl(env={**bus.env(), "_ARGCOMPLETE": "1", "COMP_LINE": line,
                                     "COMP_POINT": str(len(line)),
                                     "_ARGCOMPLETE_STDOUT_FILENAME": str(out)})
                assert r.returncode == 0, r.stderr
                return [w.strip() for w in out.read_text().split("\v")]
            assert env.name("ctl") in offered(f"vmclientctl vm stop {env.prefix}")
            r = ctl("remove", env.name("ctl"))  # no terminal to ask on
            assert r.returncode == 64 and "--yes" in r.stderr, r.stderr
            r = ctl("remove", "--yes", env.name("ctl"))
            assert r.returncode == 0, r.stderr
            r = ctl("remove", "--yes", env.name("ctl"))
            assert r.returncode == 1 and "No such VM" in r.stderr, r.stderr
            r = ctl("restore", "nosuchvm")
            assert r.returncode == 1, r.stderr
            assert "No such VM in the datacenter for this device: 'nosuchvm'" in r.stderr, \
                r.stderr
        finally:
            client.disconnect()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()
            assert "Traceback" not in log_path.read_text(), log_path.read_text()

