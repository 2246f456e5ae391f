"""The D-Bus API and vmclientctl end to end, as root and as unprivileged users."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import dbus
import libvirt
import pytest
from fixtures_udev import SimulatedLaptop
from powerd_harness import BUS_NAME, POWER_IFACE, POWER_PATH, wait_for

import testlib
from testlib import INTERFACES, need

NOBODY = 65534


def vmclientctl(d, *args: str, uid: int | None = None, gids: list[int] | None = None):
    return testlib.vmclientctl(*args, env=d.env, user=uid, groups=gids or ())


def _normalise(node: ET.Element) -> list:
    out = []
    for iface in node.iter("interface"):
        if iface.get("name") != POWER_IFACE:
            continue
        for child in iface:
            args = [(a.get("name"), a.get("type"), a.get("direction")) for a in child.iter("arg")]
            out.append((child.tag, child.get("name"), child.get("type"), child.get("access"),
                        args))
    return sorted(out)


def test_runtime_introspection_equals_the_interface_xml(powerd):
    d = powerd()
    obj = d.conn.get_object(BUS_NAME, POWER_PATH)
    runtime = ET.fromstring(str(obj.Introspect(dbus_interface="org.freedesktop.DBus.Introspectable")))
    shipped = ET.parse(INTERFACES / f"{POWER_IFACE}.xml").getroot()
    assert _normalise(runtime) == _normalise(shipped)
    assert _normalise(shipped)  # the file really declares the interface


def test_status_json_and_text(powerd, vms):
    vms.create("a")
    d = powerd()
    r = vmclientctl(d, "power", "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["lid"] == "open" and s["power_source"] == "ac" and s["battery_present"]
    assert s["battery_percent"] == 80.0 and s["state"] == "running" and s["owns_lid"]
    assert s["lid_action"] == "suspend" and s["paused_by_us"] == []
    r = vmclientctl(d, "power", "status")
    assert "Lid:" in r.stdout and "battery at 80%" in r.stdout


def test_pause_all_and_resume_all_as_root(powerd, vms):
    vms.create("a")
    user = vms.create("user")
    user.suspend()
    d = powerd()
    r = vmclientctl(d, "power", "pause-all", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"paused": [vms.names[0]]}
    assert vms.state(vms.names[0]) == libvirt.VIR_DOMAIN_PAUSED
    status = json.loads(vmclientctl(d, "power", "status", "--json").stdout)
    assert status["paused_by_us"] == [{"name": vms.names[0], "action": "pause", "causes": ["user"]}]
    assert status["state"] == "paused"
    # on the bus: PausedByUs a(su), the action 1 Pause; PauseCauses 3 User
    assert [tuple(r) for r in d.props()["PausedByUs"]] == [(vms.names[0], 1)]
    assert [(n, list(cs)) for n, cs in d.props()["PauseCauses"]] == [(vms.names[0], [3])]
    r = vmclientctl(d, "power", "resume-all")
    assert r.returncode == 0 and r.stdout.strip() == f"resumed: {vms.names[0]}"
    assert vms.state(vms.names[0]) == libvirt.VIR_DOMAIN_RUNNING
    assert vms.state(vms.names[1]) == libvirt.VIR_DOMAIN_PAUSED


def test_pause_and_resume_of_one_vm_leave_the_others_and_outlive_a_resume_all(powerd, vms):
    a, b = vms.create("a").name(), vms.create("b").name()
    d = powerd()
    r = vmclientctl(d, "power", "pause", a, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"paused": [a]}
    assert vms.states() == {a: libvirt.VIR_DOMAIN_PAUSED, b: libvirt.VIR_DOMAIN_RUNNING}
    assert [(n, list(cs)) for n, cs in d.props()["PauseCauses"]] == [(a, [3])]  # User
    r = vmclientctl(d, "power", "pause", a)  # held already: still held, for the user
    assert r.returncode == 0 and r.stdout.strip() == f"paused: {a}", r.stderr
    r = vmclientctl(d, "power", "resume", b)  # not vmclient's to resume: nothing
    assert r.returncode == 0 and r.stdout.strip() == "resumed: none", r.stderr
    assert vms.state(a) == libvirt.VIR_DOMAIN_PAUSED
    # PauseAll then the one VM's resume: the other stays paused by the user
    assert d.call("PauseAll") == sorted([a, b])
    r = vmclientctl(d, "power", "resume", a)
    assert r.returncode == 0 and r.stdout.strip() == f"resumed: {a}", r.stderr
    assert vms.states() == {a: libvirt.VIR_DOMAIN_RUNNING, b: libvirt.VIR_DOMAIN_PAUSED}
    assert [n for n, _ in d.props()["PausedByUs"]] == [b]
    r = vmclientctl(d, "power", "pause", "vmclient-test-no-such-vm")
    assert r.returncode != 0 and "it is not a running VM of vmclient" in r.stderr, r.stderr


def test_unprivileged_user_may_read_but_not_pause(powerd, vms):
    vms.create("a")
    d = powerd()
    r = vmclientctl(d, "power", "status", "--json", uid=NOBODY)
    assert r.returncode == 0, r.stderr
    r = vmclientctl(d, "power", "pause-all", uid=NOBODY)
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert "vmclient" in r.stderr and "group" in r.stderr
    assert vms.state(vms.names[0]) == libvirt.VIR_DOMAIN_RUNNING


def test_vmclient_group_member_may_pause(powerd, vms):
    import grp

    gid = grp.getgrnam("vmclient").gr_gid
    vms.create("a")
    d = powerd()
    r = vmclientctl(d, "power", "pause-all", "--json", uid=NOBODY, gids=[gid])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"paused": [vms.names[0]]}


def test_polkit_decides_where_it_runs(system_bus, powerd, vms):
    import grp

    gid = grp.getgrnam("vmclient").gr_gid
    polkit = system_bus.spawn_mock("polkitd")
    vms.create("a")
    d = powerd()
    r = vmclientctl(d, "power", "pause-all", uid=NOBODY, gids=[gid])
    assert r.returncode == 77 and "polkit" in r.stderr, r.stderr  # group member, polkit says no
    polkit.SetAllowed(["org.vmclient.VMClient1.power.manage"])
    r = vmclientctl(d, "power", "pause-all", uid=NOBODY, gids=[gid])
    assert r.returncode == 0, r.stderr


def test_properties_changed_is_emitted(powerd, vms, laptop):
    vms.create("a")
    d = powerd()
    from dbus.mainloop.glib import DBusGMainLoop
    from gi.repository import GLib  # dbus-python main loop for signals

    DBusGMainLoop(set_as_default=True)
    conn = dbus.bus.BusConnection(d.bus.address, mainloop=DBusGMainLoop())
    seen: list[dict] = []
    conn.add_signal_receiver(lambda iface, changed, _inv: seen.append(dict(changed)),
                             "PropertiesChanged", "org.freedesktop.DBus.Properties",
                             path=POWER_PATH)
    laptop.set_lid(True)
    ctx = GLib.MainContext.default()
    wait_for(lambda: (ctx.iteration(False), any("LidState" in c for c in seen))[1], 10,
             "PropertiesChanged(LidState)")
    assert any(c.get("LidState") == 3 for c in seen)


@pytest.fixture
def desktop() -> Iterator[SimulatedLaptop]:
    lap = SimulatedLaptop(lid=False, battery=False)
    yield lap
    lap.close()


def test_desktop_without_lid_or_battery_works(logind, vms, desktop, run_powerd):
    vms.create("a")
    d = run_powerd(f'[vms]\nname_prefix = "{vms.prefix}-"\n', desktop)
    p = d.props()
    assert p["LidState"] == 1 and not p["BatteryPresent"] and p["PowerSource"] == 1
    assert p["LidAction"] == 1
    logind.prepare_for_sleep(True)
    wait_for(lambda: vms.state(vms.names[0]) == libvirt.VIR_DOMAIN_PAUSED, 10, "paused")
    r = vmclientctl(d, "power", "status")
    assert "no lid" in r.stdout and "no battery" in r.stdout


def test_lid_switch_going_away_and_coming_back_is_followed(powerd, laptop, logind, vms):
    vms.create("a")
    d = powerd()
    assert d.props()["LidState"] == 2
    laptop.remove_lid()
    wait_for(lambda: d.props()["LidState"] == 1, 10, "lid reported absent")
    assert d.props()["LidAction"] == 1  # nothing to act on
    laptop.add_lid()
    wait_for(lambda: d.props()["LidState"] == 2, 10, "lid found again")
    laptop.set_lid(True)
    wait_for(lambda: logind.suspend_count() == 1, 10, "the new lid device is watched")


def test_cli_says_when_the_daemon_is_not_running(system_bus, tmp_path):
    from powerd_harness import PowerDaemon

    d = PowerDaemon(system_bus, None, tmp_path)
    r = vmclientctl(d, "power", "status")
    assert r.returncode == 69 and "vmclient-powerd" in r.stderr and "not running" in r.stderr


@pytest.fixture(autouse=True)
def _root() -> None:
    need(os.geteuid() == 0, "needs root (libvirt, setpriv)")
