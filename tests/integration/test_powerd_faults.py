"""vmclient-powerd when things go wrong: lid bounces, libvirtd failing under it, pauses that
fail, the daemon killed while VMs are paused, pauses of different causes."""

from __future__ import annotations

import json
import os
import signal

import libvirt
from powerd_harness import wait_for

RUNNING, PAUSED = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED


def all_in(vms, state: int, names=None) -> bool:
    return all(vms.state(n) == state for n in (names or vms.names))


def test_a_lid_closed_and_reopened_at_once_does_not_suspend_the_host(powerd, logind, vms, laptop):
    vms.create("a")
    d = powerd()
    laptop.set_lid(True)
    laptop.set_lid(False)  # a few ms later: the lid bounced (well within 100 ms)
    wait_for(lambda: "lid-opened -> " in d.log(), 10, "the lid opening handled")
    wait_for(lambda: all_in(vms, RUNNING), 10, "the VM running")
    assert logind.suspend_count() == 0, d.log()
    assert d.paused_by_us() == {}


def test_libvirtd_failing_at_lid_close_still_suspends_the_host(powerd, logind, vms, laptop,
                                                                libvirtd_link):
    vms.create("a")
    d = powerd(f'[libvirt]\nuri = "{libvirtd_link.uri}"\n')
    assert logind.holds("handle-lid-switch", "block")
    libvirtd_link.fail_next_call()  # the pause's first call dies with libvirtd
    laptop.set_lid(True)
    wait_for(lambda: logind.suspend_count() == 1, 10, "logind Suspend() called anyway")
    # the sleep that follows pauses the VM over the new connection and lets the host go
    wait_for(lambda: not logind.holds("sleep", "delay"), 5, "the sleep lock released")
    log = d.log()
    assert "lid-closed -> ['pause-vms'" in log and "is not available" in log, log


def test_libvirtd_failing_at_wake_resumes_the_vms_once_it_is_back(powerd, logind, vms,
                                                                   libvirtd_link):
    vms.create("a")
    vms.create("b")
    d = powerd(f'[libvirt]\nuri = "{libvirtd_link.uri}"\n')
    logind.prepare_for_sleep(True)
    wait_for(lambda: all_in(vms, PAUSED) and not logind.holds("sleep", "delay"), 10,
             "paused for sleep")
    libvirtd_link.fail_next_call()  # the resume's first call dies with libvirtd
    logind.prepare_for_sleep(False)
    wait_for(lambda: all_in(vms, RUNNING), 30, "the VMs resumed")
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left held")
    assert logind.holds("sleep", "delay")


def test_libvirtd_down_through_the_wake_up_resumes_the_vms_when_it_returns(powerd, logind, vms,
                                                                          libvirtd_link):
    vms.create("a")
    d = powerd(f'[libvirt]\nuri = "{libvirtd_link.uri}"\n[vms]\ntimeout_s = 1\n')
    logind.prepare_for_sleep(True)
    wait_for(lambda: all_in(vms, PAUSED) and not logind.holds("sleep", "delay"), 10,
             "paused for sleep")
    libvirtd_link.cut()
    logind.prepare_for_sleep(False)
    wait_for(lambda: "resumed: (none)" in d.log(), 30, "the resume given up")
    assert all_in(vms, PAUSED)
    libvirtd_link.listen()
    wait_for(lambda: all_in(vms, RUNNING), 30, "the VMs resumed once libvirtd is back")
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left held")


def test_a_pause_that_fails_leaves_the_others_paused_and_the_lock_goes(powerd, logind, vms):
    vms.create("ok")
    vms.create("nosave", policy="save", persistent=False)  # libvirt: no managed save for it
    d = powerd()
    logind.prepare_for_sleep(True)
    wait_for(lambda: not logind.holds("sleep", "delay"), 5, "the sleep lock released")
    assert vms.state(vms.names[0]) == PAUSED and vms.state(vms.names[1]) == RUNNING
    assert d.paused_by_us() == {vms.names[0]: "pause"}
    assert "not saved" in d.log() or "managed save" in d.log()
    logind.prepare_for_sleep(False)
    wait_for(lambda: all_in(vms, RUNNING), 10, "resumed")


def test_powerd_killed_mid_batch_lets_go_of_its_locks_and_resumes_on_restart(powerd, logind, vms):
    vms.create("ok1")
    vms.create("ok2")
    vms.create("hang")
    pid = vms.qemu_pid(vms.names[2])
    d = powerd("[sleep]\nmax_delay_s = 4\n")
    assert logind.holds("handle-lid-switch", "block") and logind.holds("sleep", "delay")
    os.kill(pid, signal.SIGSTOP)  # its pause hangs: the batch is still running
    try:
        logind.prepare_for_sleep(True)
        wait_for(lambda: all_in(vms, PAUSED, vms.names[:2]), 3, "two VMs paused")
        d.proc.kill()  # SIGKILL inside the batch
        d.proc.wait()
        # logind (dbusmock tracks the fds) drops the inhibitors of a dead process
        wait_for(lambda: not logind.holds("handle-lid-switch", "block")
                 and not logind.holds("sleep", "delay"), 5, "the inhibitors released")
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: all_in(vms, PAUSED), 10, "the hung pause done by libvirtd")
    d.start()  # the lid is open: what the dead daemon paused runs again
    wait_for(lambda: all_in(vms, RUNNING), 20, "every VM resumed on restart")
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left held")


def test_powerd_killed_while_the_host_sleeps_resumes_after_restart(powerd, logind, vms):
    vms.create("a")
    user = vms.create("user")
    user.suspend()  # the user's own pause is kept
    d = powerd()
    logind.prepare_for_sleep(True)
    wait_for(lambda: not logind.holds("sleep", "delay"), 5, "the sleep lock released")
    d.proc.kill()
    d.proc.wait()
    wait_for(lambda: not logind.holds("handle-lid-switch", "block"), 5, "the block lock gone")
    d.start()
    wait_for(lambda: vms.state(vms.names[0]) == RUNNING, 20, "resumed on restart")
    assert vms.state(vms.names[1]) == PAUSED


def held_in(directory) -> dict[str, tuple[str, bool]]:
    """What powerd's state.json in ``directory`` records: UUID -> (action, paused)."""
    path = directory / "state.json"
    if not path.exists():
        return {}
    return {i["uuid"]: (i["action"], i["paused"]) for i in json.loads(path.read_text())["held"]}


def test_pauses_are_recorded_in_the_runtime_directory_and_saves_in_the_state_directory(
        powerd, logind, vms):
    """A pause is recorded in the runtime directory (a tmpfs on the laptop: the pause
    writes no disk before the sleep lock goes), where a daemon killed while the host
    sleeps finds it when it starts again; a managed save, which outlives a reboot, is
    recorded in the state directory."""
    dom = vms.create("a")
    uuid = dom.UUIDString()
    d = powerd()
    logind.prepare_for_sleep(True)
    wait_for(lambda: not logind.holds("sleep", "delay"), 5, "the sleep lock released")
    assert all_in(vms, PAUSED)
    assert held_in(d.runtime_dir) == {uuid: ("pause", False)}
    assert held_in(d.state_dir) == {}
    d.proc.kill()
    d.proc.wait()
    d.start()
    wait_for(lambda: all_in(vms, RUNNING), 20, "resumed on restart")
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left held")
    assert held_in(d.runtime_dir) == {}
    # held paused (PauseAll) when the daemon stops: saved, and the record moves to the
    # state directory
    assert d.call("PauseAll") == [vms.names[0]]
    assert held_in(d.runtime_dir) == {uuid: ("pause", False)}
    assert d.stop() == 0
    assert not dom.isActive() and dom.hasManagedSaveImage(0)
    assert held_in(d.state_dir) == {uuid: ("save", True)}
    assert held_in(d.runtime_dir) == {}
    d.start()  # still held for the user: stays saved until ResumeAll
    assert d.paused_by_us() == {vms.names[0]: "save"}
    assert d.call("ResumeAll", timeout=60) == [vms.names[0]]
    assert all_in(vms, RUNNING)
    assert held_in(d.state_dir) == {} and held_in(d.runtime_dir) == {}


def test_a_lid_opening_resumes_what_it_paused_and_not_a_pause_all(powerd, logind, vms, laptop):
    vms.create("a")
    b = vms.create("b", start=False)
    d = powerd('[lid]\non_ac = "pause"\n')
    assert d.call("PauseAll") == [vms.names[0]]
    b.create()  # started after the PauseAll
    laptop.set_lid(True)
    wait_for(lambda: vms.state(vms.names[1]) == PAUSED, 10, "B paused by the lid")
    laptop.set_lid(False)
    wait_for(lambda: vms.state(vms.names[1]) == RUNNING, 10, "B resumed when the lid opened")
    assert vms.state(vms.names[0]) == PAUSED
    wait_for(lambda: d.paused_by_us() == {vms.names[0]: "pause"}, 5, "B no longer held")
    assert [(str(n), [int(c) for c in cs]) for n, cs in d.props()["PauseCauses"]] == \
        [(vms.names[0], [3])]  # User
    assert d.call("ResumeAll") == [vms.names[0]]
    assert all_in(vms, RUNNING)
