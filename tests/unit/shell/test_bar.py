"""The status bar's power field from vmclient-powerd's properties."""

from __future__ import annotations

import time

from vmclient.shell.bar import power_text, sync_text


def test_power_source_and_battery():
    assert power_text({"PowerSource": 1, "BatteryPresent": True, "BatteryPercent": 80.0}) \
        == "On AC, battery 80%"
    assert power_text({"PowerSource": 2, "BatteryPresent": True, "BatteryPercent": 44.6}) \
        == "On battery, 45%"
    assert power_text({"PowerSource": 1, "BatteryPresent": False}) == "On AC"


def test_powerd_pausing_or_saving_is_said():
    assert power_text({"PowerSource": 2, "BatteryPresent": True, "BatteryPercent": 3.0,
                       "State": 5}) == "On battery, 3% \u00b7 saving the VMs"
    assert power_text({"State": 3}) == "VMs paused"


def test_nothing_while_powerd_is_not_there_and_nonsense_is_not_trusted():
    assert power_text({}) == ""
    assert power_text({"PowerSource": 7, "BatteryPercent": "x"}) == ""


def test_a_sync_in_progress_and_the_lease():
    # syncd's State: 1 idle, 2 running, 3 paused, 4 waiting
    assert sync_text({"State": 2, "CurrentVM": "work", "BytesDone": 45,
                      "BytesTotal": 100, "LeaseRemaining": 13 * 3600 + 120}) \
        == "Syncing work 45% \u00b7 lease 13 h 2 min"
    assert sync_text({"State": 4, "LeaseRemaining": 20 * 86400 + 7200}) \
        == "Sync waiting \u00b7 lease 20 d 2 h"
    assert sync_text({"State": 3}) == "Sync paused"
    assert sync_text({"State": 1, "LeaseRemaining": -1,
                      "LeaseState": "the lease has expired: renew it"}) == "lease expired"
    assert sync_text({"State": 1, "LeaseRemaining": -1, "LeaseState": "not enrolled"}) \
        == ""
    assert sync_text({"State": 2, "CurrentVM": "x", "BytesTotal": 0}) == "Syncing x"
    assert sync_text({"State": "running", "CurrentVM": "x"}) == ""  # not syncd's type
    assert sync_text({"State": 9}) == ""  # a state this shell does not know
    assert sync_text({}) == ""


def test_pending_orders_from_it():
    from vmclient.shell.bar import pending_text

    rows = [("crm", "done"), ("erp", "failed"), ("work", "done"), ("hr", "done")]
    assert pending_text(rows, {"work"}) == "From IT: 2 VMs to install, 1 order failed"
    assert pending_text([("crm", "done")], set()) == "From IT: 1 VM to install"
    assert pending_text([("crm", "done")], {"crm"}) == ""
    assert pending_text([], set()) == ""


def test_an_install_in_progress_from_provd():
    from vmclient.shell.bar import install_text

    assert install_text({"Phase": 3, "CurrentVM": "crm", "BytesDone": 45, "BytesTotal": 100}) \
        == "Installing crm: downloading 45%"
    assert install_text({"Phase": 5, "CurrentVM": "crm"}) == "Installing crm: defining"
    assert install_text({"Phase": 1, "CurrentVM": ""}) == ""  # idle
    assert install_text({}) == ""  # provd not there
    assert install_text({"Phase": "x", "BytesTotal": "y"}) == ""


def test_a_private_vms_media_copied_in_with_its_progress_bar():
    from vmclient.shell.bar import install_fraction, install_text

    copying = {"Phase": 8, "CurrentVM": "home", "BytesDone": 3 << 30, "BytesTotal": 4 << 30}
    assert install_text(copying) == "Installing home: copying the media 75%"
    assert install_fraction(copying) == 0.75
    assert install_fraction({**copying, "BytesDone": 5 << 30}) == 1.0
    assert install_fraction({"Phase": 3, "BytesDone": 1, "BytesTotal": 4}) == 0.25
    # no bytes counted, idle, no provd, junk: no bar
    for props in ({"Phase": 5, "CurrentVM": "home"}, {"Phase": 1}, {},
                  {"Phase": 8, "BytesDone": 1, "BytesTotal": 0}, {"Phase": "x"},
                  {"Phase": 8, "BytesDone": "x", "BytesTotal": "y"}):
        assert install_fraction(props) is None, props


def test_a_streamed_restore_in_progress_from_provd():
    from vmclient.shell.bar import install_text

    assert install_text({"Phase": 6, "CurrentVM": "crm"}) \
        == "Restoring crm: starting from the datacenter"
    assert install_text({"Phase": 1, "Fills": {"crm": (1, 4)}}) \
        == "Restoring crm: filling its disks 25%"


def test_the_bar_shows_every_vm_whose_disks_fill_each_with_its_own_share():
    from vmclient.shell.bar import install_text

    fills = {"hr": (3, 5), "crm": (1, 4)}
    assert install_text({"Phase": 1, "Fills": fills}) \
        == "Restoring 2 VMs: filling their disks (crm 25%, hr 60%)"
    many = {f"vm{i}": (i, 10) for i in range(6)}
    assert install_text({"Phase": 1, "Fills": many}) == (
        "Restoring 6 VMs: filling their disks (vm0 0%, vm1 10%, vm2 20%, vm3 30%, 2 more)")
    # a long operation runs: its progress is shown, the fills go on behind it
    assert install_text({"Phase": 3, "CurrentVM": "x", "BytesDone": 1, "BytesTotal": 2,
                         "Fills": fills}) == "Installing x: downloading 50%"
    assert install_text({"Phase": 1, "Fills": {}}) == ""
    assert install_text({"Phase": 1, "Fills": {"a": (1, 0)}}) \
        == "Restoring a: filling its disks 0%"
    for junk in ("x", {"a": "bc"}, {"a": (1,)}, {"a": ("x", 2)}, 5):
        assert install_text({"Phase": 1, "Fills": junk}) == ""


def test_why_a_vm_is_paused_from_powerd():
    from vmclient.shell.bar import vm_detail

    # powerd's PausedByUs action: 1 pause, 2 guest S3, 3 save
    power = {"PausedByUs": [("work", 1), ("home", 3), ("old", 1)],
             "PauseCauses": [("work", [3]), ("home", [4]), ("old", [])]}
    assert vm_detail("work", "running", power) == ""
    assert vm_detail("work", "paused", power) == "paused by you"
    assert vm_detail("home", "shutoff", power) == "saved: battery low"
    assert vm_detail("old", "paused", power) == "paused"  # every cause ended
    assert vm_detail("crm", "paused", power) == "paused"  # not powerd's doing
    assert vm_detail("work", "paused", {"PausedByUs": [("work", 1)],
                                         "PauseCauses": [("work", [1, 2])]}) \
        == "paused for sleep, paused: lid closed"
    assert vm_detail("work", "paused", {"PausedByUs": 7}) == "paused"  # nonsense: not trusted
    assert vm_detail("home", "shutoff", {"PausedByUs": [("home", 3)]}) == "saved"


def test_an_installed_host_update_asks_for_a_restart_without_quoting_syncd():
    assert sync_text({"State": 1, "HostUpdate": "2.1.0"}) == "restart to update"
    assert sync_text({"State": 1, "LeaseRemaining": 3600, "HostUpdate": "\x1b[2J2.1"}) \
        == "lease 1 h 0 min \u00b7 restart to update"
    assert sync_text({"State": 1, "HostUpdate": ""}) == ""


def test_the_bar_says_when_it_restarts_into_the_update_by_itself(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        soon = int(time.time()) + 60
        same_day = time.localtime(soon)[:3] == time.localtime()[:3]
        hhmm = time.strftime("%H:%M" if same_day else "%a %H:%M", time.localtime(soon))
        later = time.strftime("%a %H:%M", time.localtime(soon + 3 * 86400))
        assert sync_text({"State": 1, "HostUpdate": "2.1", "HostRestartAt": soon}) \
            == f"restart to update (automatic at {hhmm})"
        assert sync_text({"State": 1, "HostUpdate": "2.1", "HostRestartAt": soon + 3 * 86400}) \
            == f"restart to update (automatic at {later})"
        assert sync_text({"State": 1, "HostUpdate": "2.1", "HostRestartAt": 0}) \
            == "restart to update"
        assert sync_text({"State": 1, "HostUpdate": "2.1", "HostRestartAt": 10**30}) \
            == "restart to update (automatic at ?)"
        assert sync_text({"State": 1, "HostUpdate": "", "HostRestartAt": soon}) == ""
    finally:
        monkeypatch.undo()
        time.tzset()


def test_inside_the_window_the_bar_says_what_the_restart_waits_for_not_a_past_time():
    props = {"State": 1, "HostUpdate": "2.1", "HostRestartAt": 1000}
    assert sync_text({**props, "HostRestartWaiting": "AC power"}, now=1060) \
        == "restart to update (automatic when on AC power)"
    assert sync_text({**props, "HostRestartWaiting": "idle"}, now=1060) \
        == "restart to update (automatic when the laptop is idle)"
    assert sync_text({**props, "HostRestartWaiting": ""}, now=1060) \
        == "restart to update (automatic now)"
    assert sync_text({**props, "HostRestartWaiting": "\x1b[2J"}, now=1060) \
        == "restart to update (automatic now)"  # not syncd's words: not quoted
    assert "(automatic at " in sync_text({**props, "HostRestartWaiting": "AC power"}, now=999)


def test_later_is_offered_only_while_the_laptop_means_to_restart_by_itself():
    from vmclient.shell.actions import ACTIONS, result_text
    from vmclient.shell.bar import postpone_offered

    assert postpone_offered({"HostUpdate": "2.1", "HostRestartAt": 1000})
    assert not postpone_offered({"HostUpdate": "2.1", "HostRestartAt": 0})  # no window
    assert not postpone_offered({"HostUpdate": "", "HostRestartAt": 1000})
    assert not postpone_offered({})
    label, _b, _p, _i, method, args, _r, _t = ACTIONS["later"]
    assert (label, method, args) == ("Later", "PostponeHostRestart", ("(u)", (0,)))
    assert result_text("later", [0]) == "Restart postponed"
    assert result_text("later", [int(time.time()) + 60]).startswith("Restart postponed to ")
