"""powerd's view of the running VMs, kept from libvirt's events (the pure core)."""

from __future__ import annotations

from vmclient.power.running import View
from vmclient.virt.libvirt import POWER_NS, DomEvent


def _view() -> View:
    return View(lambda name: name.startswith("vm-"))


def _running(v: View) -> dict[str, tuple[str, str | None, bool]]:
    return {u: (g.name, g.policy, g.known) for u, g in v.running()}


def test_a_vm_started_later_joins_with_its_policy_to_read_and_learns_it():
    v = _view()
    v.begin_resync()
    v.end_resync([("u1", "vm-a", "save")])
    assert v.lifecycle("u2", "vm-b", DomEvent.STARTED)  # a policy to read
    g = v.guests["u2"]
    v.learn("u2", g.version, "ignore")
    assert _running(v) == {"u1": ("vm-a", "save", True), "u2": ("vm-b", "ignore", True)}


def test_other_vms_are_never_tracked():
    v = _view()
    assert not v.lifecycle("u9", "someone-else", DomEvent.STARTED)
    assert v.guests == {}


def test_pauses_and_stops_leave_the_running_set_and_a_resume_keeps_the_policy():
    v = _view()
    v.begin_resync()
    v.end_resync([("u1", "vm-a", "s3"), ("u2", "vm-b", None)])
    v.lifecycle("u1", "vm-a", DomEvent.SUSPENDED)
    v.lifecycle("u2", "vm-b", DomEvent.STOPPED)
    assert _running(v) == {}
    assert not v.lifecycle("u1", "vm-a", DomEvent.RESUMED)  # policy still known
    assert _running(v) == {"u1": ("vm-a", "s3", True)}
    v.lifecycle("u1", "vm-a", DomEvent.CRASHED)
    assert v.guests == {}


def test_a_power_metadata_change_makes_the_policy_unknown_and_drops_a_read_in_flight():
    v = _view()
    v.begin_resync()
    v.end_resync([("u1", "vm-a", "pause")])
    old = v.guests["u1"].version
    assert not v.metadata_changed("u1", "vm-a", "https://example.org/other")
    assert v.guests["u1"].known
    assert v.metadata_changed("u1", "vm-a", POWER_NS)
    v.learn("u1", old, "pause")  # a read that started before the change
    assert _running(v) == {"u1": ("vm-a", None, False)}
    v.learn("u1", v.guests["u1"].version, "ignore")
    assert _running(v) == {"u1": ("vm-a", "ignore", True)}


def test_a_start_reads_the_policy_afresh():
    v = _view()
    v.begin_resync()
    v.end_resync([("u1", "vm-a", "pause")])
    v.lifecycle("u1", "vm-a", DomEvent.STOPPED)
    assert v.lifecycle("u1", "vm-a", DomEvent.STARTED)
    assert _running(v) == {"u1": ("vm-a", None, False)}


def test_events_during_a_resync_are_replayed_over_its_listing():
    v = _view()
    v.begin_resync()
    # the listing was taken before these two events were delivered
    v.lifecycle("u1", "vm-a", DomEvent.SUSPENDED)
    v.lifecycle("u3", "vm-c", DomEvent.STARTED)
    v.end_resync([("u1", "vm-a", None), ("u2", "vm-b", "save")])
    assert _running(v) == {"u2": ("vm-b", "save", True), "u3": ("vm-c", None, False)}
    v.lifecycle("u1", "vm-a", DomEvent.RESUMED)  # no longer recorded for a replay
    v.begin_resync()
    v.end_resync([("u2", "vm-b", "save")])
    assert set(_running(v)) == {"u2"}


def test_a_resync_replaces_what_the_lost_events_would_have_said():
    v = _view()
    v.begin_resync()
    v.end_resync([("u1", "vm-a", None)])
    v.begin_resync()
    v.end_resync([("u2", "vm-b", "pause")])  # u1 stopped, u2 started while disconnected
    assert _running(v) == {"u2": ("vm-b", "pause", True)}
