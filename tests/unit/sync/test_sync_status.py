"""The Sync interface's enums: a VM's state, the daemon's, SyncNow's outcomes (u on the bus)."""

from __future__ import annotations

from vmclient.dbus import names
from vmclient.dbus.guard import shipped_interface, shipped_methods
from vmclient.sync.status import SyncOutcome, SyncState, daemon_state, label_of


def test_the_values_are_the_documented_ones():
    assert [(s.label, int(s)) for s in SyncState] == [
        ("unknown", 0), ("idle", 1), ("running", 2), ("paused", 3), ("waiting", 4)]
    assert [(o.label, int(o)) for o in SyncOutcome] == [
        ("unknown", 0), ("synced", 1), ("skipped", 2), ("failed", 3)]


def test_the_daemon_is_running_if_a_vm_syncs_else_paused_waiting_or_idle():
    S = SyncState
    assert daemon_state({S.IDLE, S.WAITING, S.PAUSED, S.RUNNING}) == S.RUNNING
    assert daemon_state({S.IDLE, S.WAITING, S.PAUSED}) == S.PAUSED
    assert daemon_state({S.IDLE, S.WAITING}) == S.WAITING
    assert daemon_state({S.IDLE}) == daemon_state(set()) == S.IDLE


def test_a_client_shows_a_value_it_does_not_know_as_unknown():
    assert label_of(SyncState, 4) == "waiting" and label_of(SyncOutcome, 2) == "skipped"
    assert label_of(SyncState, 9) == label_of(SyncOutcome, "synced") == "unknown"
    assert label_of(SyncState, None) == "unknown"


def test_the_interface_carries_them_as_u():
    assert shipped_methods(names.SYNC_IFACE)["SyncNow"] == ("s", "a(sus)")
    props = {p.name: p.signature for p in shipped_interface(names.SYNC_IFACE).properties}
    assert props["State"] == "u"
