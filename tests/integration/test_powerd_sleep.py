"""vmclient-powerd against real libvirtd/QEMU, a real dbus-daemon and logind (dbusmock)."""

from __future__ import annotations

import os
import signal
import time

import libvirt
from powerd_harness import BUS_NAME, POWER_IFACE, POWER_PATH, Logind, wait_for

RUNNING, PAUSED, SHUTOFF = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED,
                            libvirt.VIR_DOMAIN_SHUTOFF)


def sleep_and_watch_release(logind: Logind, vms, timeout: float = 10.0) -> tuple[float, dict]:
    """Emit PrepareForSleep(true); return (seconds until the delay lock went, VM states then)."""
    assert logind.holds("sleep", "delay")
    t0 = time.monotonic()
    logind.prepare_for_sleep(True)
    wait_for(lambda: not logind.holds("sleep", "delay"), timeout, "the sleep lock released",
             interval=0.002)
    released = time.monotonic() - t0
    return released, vms.states()


def test_sleep_pauses_every_vm_before_the_delay_lock_is_released(powerd, logind, vms):
    for i in range(3):
        vms.create(f"run{i}")
    d = powerd()
    released, states = sleep_and_watch_release(logind, vms)
    assert all(s == PAUSED for s in states.values()), states
    assert released < 5.0
    assert set(d.paused_by_us()) == set(vms.names)
    assert d.props()["State"] == 3  # Paused


def test_a_pause_delay_holds_the_pause_for_sleep_until_its_holder_closes_it(powerd, logind,
                                                                          vms):
    """The shell's lock before the pause: powerd pauses for sleep only once every
    DelayPause descriptor is closed (bounded by sleep.lock_screen_s, long here)."""
    vms.create("a")
    logind.set_inhibit_delay_max(60)
    d = powerd("[sleep]\nmax_delay_s = 40\nlock_screen_s = 20\n")
    power = d.conn.get_object(BUS_NAME, POWER_PATH)
    delay = power.DelayPause(dbus_interface=POWER_IFACE).take()
    try:
        logind.prepare_for_sleep(True)
        wait_for(lambda: d.props()["State"] == 2, 10, "powerd about to pause")  # Pausing
        time.sleep(1)
        assert vms.state(vms.names[0]) == RUNNING  # held back by the delay
        assert logind.holds("sleep", "delay")  # and so is the host's sleep
    finally:
        os.close(delay)
    wait_for(lambda: vms.state(vms.names[0]) == PAUSED, 10, "the VM paused")
    wait_for(lambda: not logind.holds("sleep", "delay"), 10, "the sleep lock released")
    assert "waiting for uid 0 before pausing" in d.log()


def test_resume_wakes_exactly_the_vms_it_paused_and_not_a_user_paused_one(powerd, logind, vms):
    vms.create("a")
    vms.create("b")
    user = vms.create("user")
    user.suspend()  # paused by the user before the laptop sleeps
    d = powerd()
    sleep_and_watch_release(logind, vms)
    assert set(d.paused_by_us()) == {vms.names[0], vms.names[1]}
    logind.prepare_for_sleep(False)
    wait_for(lambda: vms.state(vms.names[0]) == RUNNING and vms.state(vms.names[1]) == RUNNING,
             10, "the VMs resumed")
    wait_for(lambda: logind.holds("sleep", "delay"), 5, "the sleep lock taken again")
    assert vms.state(vms.names[2]) == PAUSED
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left paused by us")


def test_lid_close_and_open_with_the_block_lock_held(powerd, logind, vms, laptop):
    vms.create("a")
    vms.create("b")
    d = powerd()
    assert logind.holds("handle-lid-switch", "block")
    props = d.props()
    assert props["LidState"] == 2 and props["OwnsLid"] and props["LidAction"] == 3
    laptop.set_lid(True)
    # lid closed -> VMs paused, then logind asked to suspend (mock emits PrepareForSleep)
    wait_for(lambda: logind.suspend_count() == 1, 10, "logind Suspend() called")
    assert all(s == PAUSED for s in vms.states().values())
    wait_for(lambda: not logind.holds("sleep", "delay"), 5, "the sleep lock released")
    assert d.props()["LidState"] == 3
    # the host wakes with the lid still closed: the VMs stay paused until it opens
    logind.prepare_for_sleep(False)
    wait_for(lambda: logind.holds("sleep", "delay"), 5, "the sleep lock taken again")
    wait_for(lambda: "woke -> " in d.log(), 5, "the wake-up handled")
    assert all(s == PAUSED for s in vms.states().values())
    laptop.set_lid(False)
    wait_for(lambda: all(s == RUNNING for s in vms.states().values()), 10, "VMs running")
    assert d.props()["LidState"] == 2
    assert logind.suspend_count() == 1


def test_lid_close_with_pause_policy_pauses_without_suspending(powerd, logind, vms, laptop):
    vms.create("a")
    d = powerd('[lid]\non_ac = "pause"\n')
    laptop.set_lid(True)
    wait_for(lambda: vms.state(vms.names[0]) == PAUSED, 10, "VM paused")
    laptop.set_lid(False)
    wait_for(lambda: vms.state(vms.names[0]) == RUNNING, 10, "VM resumed on lid open")
    assert logind.suspend_count() == 0
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing held by us")


def test_a_hanging_vm_does_not_block_the_others_and_the_lock_goes_in_time(powerd, logind, vms):
    vms.create("ok1")
    vms.create("ok2")
    vms.create("hang")
    hang = vms.names[2]
    pid = vms.qemu_pid(hang)
    d = powerd("[sleep]\nmax_delay_s = 2.5\n")
    os.kill(pid, signal.SIGSTOP)  # QEMU stops answering its monitor: the pause hangs
    try:
        released, states = sleep_and_watch_release(logind, vms_proxy(vms, exclude=hang))
        # within logind's InhibitDelayMaxUSec (5 s in the mock), not held until it expires
        assert released < 5.0, f"lock held {released:.2f} s"
        assert states[vms.names[0]] == PAUSED and states[vms.names[1]] == PAUSED
    finally:
        os.kill(pid, signal.SIGCONT)
    # the late pause completes and is remembered, so the wake-up resumes it too
    wait_for(lambda: hang in d.paused_by_us(), 10, "the late pause recorded")
    logind.prepare_for_sleep(False)
    wait_for(lambda: all(s == RUNNING for s in vms.states().values()), 10, "all running")
    assert "not paused in time" in d.log()


class vms_proxy:
    def __init__(self, vms, exclude: str) -> None:
        self.vms, self.exclude = vms, exclude

    def states(self) -> dict:
        return {n: self.vms.state(n) for n in self.vms.names if n != self.exclude}


def test_s3_policy_without_a_guest_agent_falls_back_to_pause(powerd, logind, vms):
    vms.create("s3", policy="s3")
    vms.create("ignored", policy="ignore")
    d = powerd()
    _, states = sleep_and_watch_release(logind, vms)
    assert states[vms.names[0]] == PAUSED
    assert states[vms.names[1]] == RUNNING
    assert d.paused_by_us() == {vms.names[0]: "pause"}


def test_battery_critical_saves_every_vm_and_ac_restores_them(powerd, logind, vms, laptop):
    vms.create("a")
    vms.create("b")
    laptop.set_ac(False)
    d = powerd()
    wait_for(lambda: d.props()["PowerSource"] == 2, 5, "on battery")
    laptop.set_battery(3, "Critical")
    wait_for(lambda: all(s == SHUTOFF for s in vms.states().values()), 60, "VMs saved")
    for n in vms.names:
        assert vms.conn.lookupByName(n).hasManagedSaveImage(0)
    wait_for(lambda: d.paused_by_us() == {n: "save" for n in vms.names}, 5, "saves recorded")
    laptop.set_ac(True)
    wait_for(lambda: all(s == RUNNING for s in vms.states().values()), 60, "VMs restored")
    wait_for(lambda: d.paused_by_us() == {}, 5, "nothing left saved by us")


def test_shutdown_saves_every_vm_and_the_next_start_restores_them(powerd, logind, vms):
    vms.create("a")
    user = vms.create("user")
    user.suspend()
    d = powerd()
    assert d.stop() == 0
    assert all(s == SHUTOFF for s in vms.states().values())
    assert all(vms.conn.lookupByName(n).hasManagedSaveImage(0) for n in vms.names)
    d.start()
    wait_for(lambda: vms.state(vms.names[0]) == RUNNING, 60, "VM restored on start")
    # a VM the user had paused comes back paused: its state is kept as it was (paused
    # once restored, not paused "starting up" while its restore still runs)
    user_state = lambda: vms.conn.lookupByName(vms.names[1]).state()  # noqa: E731
    wait_for(lambda: user_state()[0] == PAUSED
             and user_state()[1] != libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
             60, "user-paused VM restored paused")
    wait_for(lambda: not d.paused_by_us(), 10, "nothing left saved by us")


def test_libvirtd_restart_while_paused_is_reconciled(powerd, logind, vms, libvirtd_link):
    vms.create("a")
    vms.create("b")
    d = powerd(f'[libvirt]\nuri = "{libvirtd_link.uri}"\n')
    sleep_and_watch_release(logind, vms)
    # libvirtd goes away and comes back while the VMs are paused, as the daemon sees it
    # (through the link: the machine's libvirtd, shared by every test, stays up)
    libvirtd_link.cut()
    wait_for(lambda: "to libvirtd lost" in d.log(), 20, "the daemon saw libvirtd go")
    libvirtd_link.listen()
    wait_for(lambda: "reconciling with libvirtd" in d.log(), 20, "the daemon reconnected")
    assert set(d.paused_by_us()) == set(vms.names)
    logind.prepare_for_sleep(False)
    wait_for(lambda: all(vms.state(n) == RUNNING for n in vms.names), 10, "VMs resumed")
    # each VM resumed once: a second resume finds nothing to do
    assert d.call("ResumeAll") == []
    assert d.log().count("resumed\n") + d.log().count(": resumed") >= 2


def test_bad_config_is_refused_naming_file_and_key(powerd):
    d = powerd('[lid]\non_battery = "hibernate"\n', start=False)
    d.start(wait=False)
    assert d.proc.wait(30) == 78
    assert f"{d.config}: lid.on_battery: 'hibernate' is not one of" in d.log()


def test_the_sleep_lock_goes_in_time_even_while_a_save_hangs(powerd, logind, vms, laptop):
    vms.create("stuck")
    pid = vms.qemu_pid(vms.names[0])
    laptop.set_ac(False)
    d = powerd("[sleep]\nmax_delay_s = 1.0\n[vms]\nsave_timeout_s = 20\n")
    os.kill(pid, signal.SIGSTOP)  # the managed save (battery critical) hangs
    try:
        laptop.set_battery(2, "Critical")
        wait_for(lambda: d.props()["State"] == 5, 10, "saving")
        released, _ = sleep_and_watch_release(logind, vms_proxy(vms, exclude=vms.names[0]))
        # within logind's InhibitDelayMaxUSec (5 s in the mock)
        assert released < 5.0, f"lock held {released:.2f} s while a save hung"
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "releasing the sleep lock anyway" in d.log()
