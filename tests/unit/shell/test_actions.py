"""What the bar says after one of its actions returned."""

from __future__ import annotations

from vmclient.shell.actions import result_text


def test_sync_now_says_what_synced_and_why_others_did_not():
    # SyncNow's rows (vm, outcome, detail): 1 synced, 2 skipped, 3 failed
    assert result_text("sync", [[("work", 1, "0000000002")]]) == "1 VM synced"
    assert result_text("sync", [[("work", 1, "1"), ("home", 2, "offline")]]) \
        == "1 VM synced; home skipped (offline)"
    assert result_text("sync", [[("crm", 3, "no key"), ("erp", 7, "?")]]) \
        == "0 VMs synced; crm failed (no key); erp unknown (?)"
    assert result_text("sync", [[]]) == "0 VMs synced"


def test_pause_and_resume_count_the_vms():
    assert result_text("pause", [["work", "home"]]) == "2 VMs paused"
    assert result_text("resume", [["work"]]) == "1 VM resumed"
    assert result_text("resume", [[]]) == "0 VMs resumed"


def test_each_reply_expected_is_the_interface_xmls():
    from vmclient.dbus import names
    from vmclient.dbus.guard import shipped_methods
    from vmclient.shell.actions import ACTIONS

    ours = [(iface, method, reply) for _l, _b, _p, iface, method, _a, reply, _t
            in ACTIONS.values() if iface.startswith(names.BUS_NAME)]
    assert len(ours) == 4
    for iface, method, reply in ours:
        assert reply == f"({shipped_methods(iface)[method][1]})", (iface, method)
