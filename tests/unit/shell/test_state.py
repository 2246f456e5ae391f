"""The shell's pure core: switcher order, hotkeys, zones, the lock."""

from __future__ import annotations

from dataclasses import replace

from vmclient.shell.state import (
    ZONE_COLOURS,
    Command,
    Key,
    State,
    VMEntry,
    Zone,
    choose,
    close_install,
    close_restore,
    command,
    expect,
    hotkey,
    list_failed,
    listed,
    lock,
    open_install,
    open_restore,
    overview_key,
    select,
    shown,
    sleep,
    unlock,
    view,
    wake,
    with_vms,
)

B1 = VMEntry("work", Zone.BUSINESS, "running")
B2 = VMEntry("crm", Zone.BUSINESS, "paused")
P1 = VMEntry("home", Zone.PRIVATE, "running")
OFF = VMEntry("old", Zone.PRIVATE, "shutoff")


def test_business_vms_come_first_then_private_each_by_name():
    s = with_vms(State(), [P1, OFF, B1, B2])
    assert [v.name for v in s.vms] == ["crm", "work", "home", "old"]
    assert s.current == "crm"  # the first that can be shown


def test_the_hotkey_cycles_through_the_vms_that_can_be_shown():
    s = with_vms(State(), [P1, OFF, B1, B2])
    seen = []
    for _ in range(4):
        s = command(s, Command.NEXT)
        seen.append(s.current)
    assert seen == ["work", "home", "crm", "work"]  # "old" is shut off: skipped
    assert command(s, Command.PREVIOUS).current == "crm"


def test_the_shown_vm_stays_when_the_list_changes_and_goes_when_it_stops():
    s = select(with_vms(State(), [B1, P1]), "home")
    assert with_vms(s, [B1, P1, B2]).current == "home"
    s = with_vms(s, [B1, VMEntry("home", Zone.PRIVATE, "shutoff")])
    assert s.current == "work"
    assert with_vms(s, []).current is None
    assert select(s, "home").current == "work"  # a shut-off VM cannot be selected


def test_hotkeys_are_the_shells_and_everything_else_is_the_guests():
    assert hotkey(Key("Tab", super_=True)) == Command.NEXT
    assert hotkey(Key("ISO_Left_Tab", super_=True, shift=True)) == Command.PREVIOUS
    assert hotkey(Key("Tab")) is None
    assert hotkey(Key("Tab", alt=True)) is None  # the guest's own window switcher
    assert hotkey(Key("a", super_=True)) is None


def test_the_view_shows_the_zone_colour_of_the_shown_vm():
    s = with_vms(State(), [B1, P1])
    v = view(s)
    assert (v.page, v.vm, v.zone, v.colour) == ("vm", "work", Zone.BUSINESS,
                                                ZONE_COLOURS[Zone.BUSINESS])
    v = view(command(s, Command.NEXT))
    assert (v.vm, v.colour) == ("home", ZONE_COLOURS[Zone.PRIVATE])
    assert ZONE_COLOURS[Zone.BUSINESS] != ZONE_COLOURS[Zone.PRIVATE]
    assert "paused" in view(with_vms(State(), [B2])).title
    assert view(State()).page == "none"


def test_a_vm_being_started_is_shown_as_starting():
    """provd's "starting" (QEMU is being started): the VM is shown (its display opens when
    the start is done), and the bar says it starts, not that it is paused."""
    starting = VMEntry("home", Zone.PRIVATE, "starting", "starting")
    v = view(with_vms(State(), [starting]))
    assert (v.page, v.vm, v.title) == ("vm", "home", "home \u2014 private (starting)")


def test_locked_nothing_of_a_vm_is_shown_and_switching_does_nothing():
    s = lock(with_vms(State(), [B1, P1]))
    v = view(s)
    assert (v.page, v.vm) == ("lock", None)
    assert command(s, Command.NEXT) == s
    assert view(unlock(s)).vm == "work"


def test_unknown_kinds_get_the_neutral_zone():
    assert Zone.of("business") == Zone.BUSINESS and Zone.of("other") == Zone.UNKNOWN


def test_sleep_locks_first_and_nothing_unlocks_until_the_host_is_awake():
    s = sleep(with_vms(State(), [B1, P1]))
    assert view(s).page == "lock"
    assert unlock(s) == s  # not while going to sleep
    s = wake(s)
    assert view(s).page == "lock"  # awake, still locked
    assert view(unlock(s)).vm == "work"


def test_the_overview_opens_on_its_hotkey_and_one_key_switches():
    s = with_vms(State(), [B1, P1, OFF])
    assert hotkey(Key("space", super_=True)) == Command.OVERVIEW
    o = command(s, Command.OVERVIEW)
    assert view(o).page == "overview" and o.selected == "work"
    assert overview_key(o, Key("2")).current == "home"
    assert view(overview_key(o, Key("2"))).page == "vm"
    moved = overview_key(o, Key("Right"))
    assert moved.selected == "home" and moved.overview
    assert overview_key(moved, Key("Return")).current == "home"
    assert overview_key(o, Key("Escape")) == replace(o, overview=False)
    assert overview_key(o, Key("3")) == o  # "old" is shut off: no third thumbnail
    assert choose(o, "home").current == "home" and not choose(o, "home").overview
    assert command(o, Command.OVERVIEW).overview is False  # the hotkey again closes it
    assert view(lock(o)).page == "lock" and not lock(o).overview


def test_super_l_locks_and_super_n_opens_the_wifi_page_but_not_while_locked():
    s = with_vms(State(), [B1, P1])
    assert hotkey(Key("l", super_=True)) == Command.LOCK
    assert hotkey(Key("l")) is None  # a plain l is the guest's
    assert view(command(s, Command.LOCK)).page == "lock"
    opened = command(s, Command.NETWORKS)
    assert view(opened).page == "networks" and view(opened).vm is None
    assert view(command(opened, Command.NETWORKS)).page == "vm"  # the hotkey again closes
    assert view(command(opened, Command.NEXT)).page == "vm"
    locked = command(opened, Command.LOCK)
    assert view(locked).page == "lock" and not locked.networks
    assert command(locked, Command.NETWORKS) == locked
    assert view(sleep(opened)).page == "lock"


def test_super_m_is_the_bars_menu_and_changes_nothing_the_core_keeps():
    """Super+M is the shell's (the guest never sees it); the adapter opens the bar's menu
    over a VM: the core's state stays as it was (no VM switched, no page opened)."""
    s = with_vms(State(), [B1, P1])
    assert hotkey(Key("m", super_=True)) == Command.MENU
    assert hotkey(Key("m")) is None  # a plain m is the guest's
    assert command(s, Command.MENU) == s
    assert command(lock(s), Command.MENU) == lock(s)


def test_the_bar_says_when_the_vm_list_failed_and_not_what_it_said_before():
    """provd not answering: the bar says so, never "No VM running" nor a VM's stale
    state; the next list that comes clears it."""
    failed = list_failed(State(), "vmclient-provd did not answer")
    assert view(failed).title == "Cannot list the VMs: vmclient-provd did not answer"
    assert view(failed).page == "none"
    shown = with_vms(State(), [B1, B2, P1])
    shown = select(shown, "crm")  # paused
    assert view(shown).title == "crm \u2014 business (paused)"
    stale = list_failed(shown, "timed out")
    assert view(stale).vm == "crm"  # its display stays
    assert view(stale).title == "crm \u2014 business (cannot list the VMs: its state is unknown)"
    # the old list with new details (powerd's) is not a list that came
    assert view(with_vms(stale, [B1, B2, P1])) == view(stale)
    assert view(with_vms(listed(stale), [B1, B2, P1])).title == "crm \u2014 business (paused)"
    assert view(list_failed(State(), "")).title.startswith("Cannot list the VMs: ")


def test_a_vm_just_installed_is_shown_as_soon_as_it_runs():
    s = expect(with_vms(State(), [B1]), "new")
    assert s.current == "work" and s.expected == "new"  # not listed yet
    s = with_vms(s, [B1, VMEntry("new", Zone.PRIVATE, "shutoff")])
    assert s.current == "work" and s.expected == "new"  # defined, not started yet
    s = with_vms(s, [B1, VMEntry("new", Zone.PRIVATE, "running")])
    assert s.current == "new" and s.expected is None  # its installer, at once
    assert with_vms(s, [B1, VMEntry("new", Zone.PRIVATE, "running")]).current == "new"
    s = select(s, "work")
    assert with_vms(s, [B1, VMEntry("new", Zone.PRIVATE, "running")]).current == "work"
    assert expect(s, "new").current == "new"  # running already: now


def test_the_install_page_opens_from_the_bar_and_locking_or_a_hotkey_closes_it():
    s = with_vms(State(), [B1, P1])
    o = open_install(s)
    assert view(o).page == "install" and view(o).vm is None
    assert shown(o) == B1  # the VM its button would pause: still the shown one
    assert view(close_install(o)).page == "vm"
    assert view(lock(o)).page == "lock" and not lock(o).install
    assert not unlock(lock(o)).install  # the lock closed it for good
    assert open_install(lock(s)) == lock(s)  # not while locked
    assert not command(o, Command.NEXT).install and not command(o, Command.OVERVIEW).install
    assert not command(o, Command.NETWORKS).install
    assert view(open_install(command(s, Command.NETWORKS))).page == "install"


def test_the_restore_page_opens_from_the_bar_one_page_at_a_time_and_a_hotkey_closes_it():
    s = with_vms(State(), [B1, P1])
    r = open_restore(s)
    assert view(r).page == "restore" and view(r).vm is None and shown(r) == B1
    assert view(r).title == "Restore a VM from the datacenter  (Escape: back)"
    assert view(close_restore(r)).page == "vm"
    assert not lock(r).restore and not unlock(lock(r)).restore
    assert open_restore(lock(s)) == lock(s)  # not while locked
    assert not command(r, Command.NEXT).restore and not command(r, Command.OVERVIEW).restore
    assert not command(r, Command.NETWORKS).restore
    assert view(open_install(r)).page == "install" and not open_install(r).restore
    assert view(open_restore(open_install(s))).page == "restore"
    # the restored VM is shown once it runs, its page closed
    s2 = close_restore(expect(r, "crm"))
    assert s2.current == "work" and s2.expected == "crm" and view(s2).page == "vm"
    assert with_vms(s2, [B1, P1, VMEntry("crm", Zone.BUSINESS, "running")]).current == "crm"
