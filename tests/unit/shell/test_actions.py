"""What the bar says after one of its actions returned."""

from __future__ import annotations

from vmclient.shell.actions import result_text, vm_action, vm_result_text
from vmclient.shell.state import VMEntry, Zone


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


def test_the_shown_vms_button_pauses_it_while_it_runs_and_resumes_it_else():
    assert vm_action(VMEntry("work", Zone.BUSINESS, "running")) == "pause-vm"
    assert vm_action(VMEntry("work", Zone.BUSINESS, "paused", "paused by you")) == "resume-vm"
    assert vm_action(VMEntry("home", Zone.PRIVATE, "pmsuspended")) == "resume-vm"
    assert vm_action(None) is None  # no VM shown: the button is greyed
    # QEMU is being started (libvirt: paused, starting-up): nobody paused it, nothing to
    # resume: greyed until it runs
    assert vm_action(VMEntry("home", Zone.PRIVATE, "starting", "starting")) is None


def test_pause_and_resume_of_one_vm_say_what_powerd_did():
    assert vm_result_text("pause-vm", "work", [["work"]]) == "work paused"
    assert vm_result_text("resume-vm", "work", [["work"]]) == "work resumed"
    assert vm_result_text("resume-vm", "work", [[]]) == \
        "work: not resumed (vmclient did not pause it, or it is saved)"


def test_each_reply_expected_is_the_interface_xmls():
    from vmclient.dbus import names
    from vmclient.dbus.guard import shipped_methods
    from vmclient.shell.actions import ACTIONS, VM_ACTIONS

    ours = [(iface, method, reply) for _l, _b, _p, iface, method, _a, reply, _t
            in ACTIONS.values() if iface.startswith(names.BUS_NAME)]
    ours += [(names.POWER_IFACE, method, "(as)") for _l, method in VM_ACTIONS.values()]
    assert len(ours) == 6
    for iface, method, reply in ours:
        assert reply == f"({shipped_methods(iface)[method][1]})", (iface, method)
    for _l, method in VM_ACTIONS.values():  # the VM's name, as the call passes it
        assert shipped_methods(names.POWER_IFACE)[method][0] == "s"
