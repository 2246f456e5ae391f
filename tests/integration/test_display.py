"""The Display object of vmclient-provd: a SPICE connection to a VM for the seat's
session (polkit ``org.vmclient.VMClient1.open-display``), and for no one else."""

from __future__ import annotations

import json
import shutil
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from echo_guest import EchoGuests, echo_guests
from fixtures_bus import PrivateSystemBus
from fixtures_virt import scaled
from provd_harness import NAME, ProvDaemon

from testlib import INTERFACES, need, run

HERE = Path(__file__).resolve().parent
PATH = "/org/vmclient/VMClient1/Display"
IFACE = "org.vmclient.VMClient1.Display"
ACTION = "org.vmclient.VMClient1.open-display"
ERR = "org.vmclient.VMClient1.Error."
NOBODY = 65534


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    import os

    need(os.geteuid() == 0, "needs root (libvirt, setpriv)")
    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    try:
        import gi

        gi.require_version("SpiceClientGLib", "2.0")
    except (ImportError, ValueError):
        need(False, "spice-gtk's introspection data (gir1.2-spiceclientglib-2.0) is missing")


@pytest.fixture
def guests() -> Iterator[EchoGuests]:
    with echo_guests(f"vmcd-{uuid.uuid4().hex[:6]}") as g:
        yield g


@pytest.fixture
def provd(system_bus: PrivateSystemBus, tmp_path: Path) -> Iterator[ProvDaemon]:
    with ProvDaemon(system_bus, tmp_path) as d:
        yield d


def client(bus: PrivateSystemBus, vm: str, uid: int | None = None) -> dict[str, str]:
    """What display_client.py got: ``{"spice": event}`` or ``{"error": name, ...}``."""
    r = run([sys.executable, HERE / "display_client.py", vm], env=bus.env(), user=uid,
            timeout=scaled(60))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_seats_session_gets_a_spice_connection(system_bus, provd, guests):
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed([ACTION])  # as polkitd answers for the active session (allow_active)
    vm = guests.create("a", "business", 0, "A")
    assert client(system_bus, vm, uid=NOBODY) == {"spice": "SPICE_CHANNEL_OPENED"}


def test_a_caller_outside_the_session_is_refused(system_bus, provd, guests):
    vm = guests.create("a", "private", 1, "B")
    # no polkitd: root and the vmclient group only
    refused = client(system_bus, vm, uid=NOBODY)
    assert refused["error"] == ERR + "PermissionDenied", refused
    assert "vmclient" in refused["message"]
    # polkitd says no (an inactive session, another seat, a system service)
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed(["org.vmclient.VMClient1.provision.manage"])
    refused = client(system_bus, vm, uid=NOBODY)
    assert refused["error"] == ERR + "PermissionDenied", refused
    assert ACTION in refused["message"]


def test_only_running_vmclient_vms_are_shown(system_bus, provd, guests):
    foreign = guests.create("foreign", "", 0, "F")  # a domain that is not vmclient's
    stopped = guests.create("stopped", "business", 0, "S", start=False)
    running = guests.create("running", "private", 1, "R")
    assert client(system_bus, foreign)["error"] == ERR + "VMNotFound"
    err = client(system_bus, stopped)
    assert err["error"] == ERR + "VMOperationFailed" and "not running" in err["message"], err
    assert client(system_bus, running) == {"spice": "SPICE_CHANNEL_OPENED"}
    conn = system_bus.connection()
    rows = conn.call_blocking(NAME, PATH, IFACE, "ListVMs", "", [])
    listed = {str(n): (str(k), str(s)) for n, k, s in rows}
    assert listed[stopped] == ("business", "shutoff") and listed[running] == ("private",
                                                                              "running")
    assert foreign not in listed
    # introspection equals the shipped XML
    live = ET.fromstring(str(conn.call_blocking(
        NAME, PATH, "org.freedesktop.DBus.Introspectable", "Introspect", "", [])))
    shipped = ET.parse(INTERFACES / f"{IFACE}.xml").getroot()

    def members(root: ET.Element) -> list[tuple[str | None, list[tuple[str | None, ...]]]]:
        iface = root.find(f"interface[@name='{IFACE}']")
        assert iface is not None
        return sorted((m.get("name"), [(a.get("name"), a.get("type"), a.get("direction"))
                                       for a in m.iter("arg")]) for m in iface)
    assert members(live) == members(shipped)


def test_a_vm_whose_qemu_is_starting_is_listed_starting_not_paused(system_bus, provd,
                                                                    guests):
    """libvirt says paused (reason starting-up) while QEMU starts: nobody paused it."""
    paused = guests.create("paused", "business", 0, "P")
    guests.conn.lookupByName(paused).suspend()
    conn = system_bus.connection()
    with guests.starting("starting", "private", 1, "S") as starting:
        rows = conn.call_blocking(NAME, PATH, IFACE, "ListVMs", "", [])
        listed = {str(n): str(s) for n, _k, s in rows}
        assert listed[starting] == "starting" and listed[paused] == "paused", listed
        rows = conn.call_blocking(NAME, "/org/vmclient/VMClient1/Provisioning",
                                  "org.vmclient.VMClient1.Provisioning", "List", "", [])
        assert {str(r[0]): str(r[2]) for r in rows}[starting] == "starting"
