"""The power policy tables: (state, event, what is held) -> actions and per-VM causes,
without I/O."""

from __future__ import annotations

import pytest

from vmclient.power.policy import (
    Action,
    Cause,
    Event,
    Hold,
    HoldAction,
    LidAction,
    LidPolicy,
    LidState,
    PowerSource,
    State,
    VMPolicy,
    add_cause,
    causes_of,
    decide,
    due,
    held,
    release,
    suspend_wanted,
)

A = Action
SLEEP, LID, USER = frozenset({Cause.SLEEP}), frozenset({Cause.LID}), frozenset({Cause.USER})
PAUSE, SAVE = HoldAction.PAUSE, HoldAction.SAVE
NONE: dict[str, Hold] = {}


def paused(cause: Cause, *more: Cause, action: HoldAction = PAUSE) -> dict[str, Hold]:
    """VM "a" held by ``action`` for the causes given."""
    return add_causes(held({}, "a", "A", action, cause), *more)


def add_causes(t: dict[str, Hold], *causes: Cause) -> dict[str, Hold]:
    for c in causes:
        t = add_cause(t, c)
    return t


def test_sleep_pauses_then_releases_the_lock():
    d = decide(State(), Event.SLEEP, NONE)
    assert d.actions == [A.PAUSE_VMS, A.RELEASE_SLEEP_LOCK]
    assert d.adds == Cause.SLEEP


def test_wake_after_sleep_takes_the_lock_resumes_and_syncs_clocks():
    t = paused(Cause.SLEEP)
    d = decide(State(lid=LidState.OPEN), Event.WOKE, t)
    assert d.actions == [A.TAKE_SLEEP_LOCK, A.RESUME_VMS, A.SYNC_CLOCKS]
    assert d.ends == SLEEP | LID and due(release(t, d.ends)) == ["a"]


def test_wake_keeps_vms_the_user_paused_through_the_api():
    assert decide(State(), Event.WOKE, paused(Cause.USER)).actions == [A.TAKE_SLEEP_LOCK]


def test_wake_with_the_lid_still_closed_keeps_what_the_lid_paused():
    t = paused(Cause.LID, Cause.SLEEP)
    d = decide(State(lid=LidState.CLOSED), Event.WOKE, t)
    assert d.ends == SLEEP and release(t, d.ends)["a"].causes == LID


@pytest.mark.parametrize(("source", "docked", "policy", "expected"), [
    (PowerSource.AC, False, LidPolicy(), [A.PAUSE_VMS, A.SUSPEND_HOST]),
    (PowerSource.BATTERY, False, LidPolicy(on_battery=LidAction.PAUSE), [A.PAUSE_VMS]),
    (PowerSource.AC, False, LidPolicy(on_ac=LidAction.IGNORE), []),
    (PowerSource.AC, True, LidPolicy(), []),  # docked: ignore by default
    (PowerSource.AC, True, LidPolicy(docked=LidAction.SUSPEND), [A.PAUSE_VMS, A.SUSPEND_HOST]),
    (PowerSource.AC, False, LidPolicy(own_lid=False), []),  # logind decides
])
def test_lid_close_follows_the_lid_policy(source, docked, policy, expected):
    s = State(lid=LidState.CLOSED, source=source, docked=docked, lid_policy=policy)
    assert decide(s, Event.LID_CLOSED, NONE).actions == expected


def test_a_lid_closed_event_read_after_the_lid_reopened_does_nothing():
    # the bounce: by the time the event is handled the switch reads open again
    assert decide(State(lid=LidState.OPEN, source=PowerSource.AC), Event.LID_CLOSED,
                  NONE).actions == []


def test_suspend_is_wanted_only_while_the_lid_stays_closed():
    closed = State(lid=LidState.CLOSED, source=PowerSource.AC)
    assert suspend_wanted(closed)
    assert not suspend_wanted(State(lid=LidState.OPEN, source=PowerSource.AC))
    assert not suspend_wanted(State(lid=LidState.CLOSED, lid_policy=LidPolicy(on_ac=LidAction.PAUSE),
                                    source=PowerSource.AC))


def test_lid_open_resumes_only_what_the_lid_paused():
    d = decide(State(), Event.LID_OPENED, paused(Cause.LID))
    assert d.actions == [A.RESUME_VMS, A.SYNC_CLOCKS] and d.ends == LID
    assert decide(State(), Event.LID_OPENED, paused(Cause.USER)).actions == []
    assert decide(State(), Event.LID_OPENED, NONE).actions == []


def test_lid_close_then_sleep_then_wake_with_the_lid_open_resumes():
    closed = State(lid=LidState.CLOSED, source=PowerSource.AC)
    d = decide(closed, Event.LID_CLOSED, NONE)
    assert d.adds is not None
    t = held(NONE, "a", "A", PAUSE, d.adds)  # what the controller holds after the pause
    d = decide(closed, Event.SLEEP, t)
    assert d.adds is not None
    t = add_cause(t, d.adds)
    assert t["a"].causes == LID | SLEEP
    d = decide(State(lid=LidState.OPEN, source=PowerSource.AC), Event.WOKE, t)
    assert A.RESUME_VMS in d.actions and due(release(t, d.ends)) == ["a"]


def test_the_policy_decides_from_the_held_table_alone():
    # no copy of the causes in the state: the same state decides by what is held
    s = State(lid=LidState.OPEN)
    assert decide(s, Event.LID_OPENED, paused(Cause.LID)).actions == [A.RESUME_VMS,
                                                                        A.SYNC_CLOCKS]
    assert decide(s, Event.LID_OPENED, paused(Cause.LID, Cause.USER)).actions == [
        A.RESUME_VMS, A.SYNC_CLOCKS]  # the lid ends: a's undo waits for the user
    assert decide(s, Event.LID_OPENED, paused(Cause.SLEEP)).actions == []


def test_causes_are_kept_per_vm_so_the_lid_does_not_resume_a_pause_all():
    # A paused by PauseAll, then B (started later) by the lid: the lid opening resumes B only
    t = held({}, "a", "A", PAUSE, Cause.USER)
    t = held(t, "b", "B", PAUSE, Cause.LID)
    assert causes_of(t, saved=False) == USER | LID and causes_of(t, saved=True) == frozenset()
    d = decide(State(), Event.LID_OPENED, t)
    assert d.actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    after = release(t, d.ends)
    assert due(after) == ["b"] and after["a"].causes == USER


def test_a_pause_all_over_a_lid_pause_outlives_the_lid():
    t = held({}, "b", "B", PAUSE, Cause.LID)
    t = add_cause(t, Cause.USER)
    assert due(release(t, LID)) == []
    ends = decide(State(), Event.RESUME_REQUESTED, t).ends
    assert due(release(release(t, LID), ends)) == ["b"]


def test_a_pause_or_resume_of_one_vm_adds_or_ends_its_causes_alone():
    # PauseVM / ResumeVM: the same events as PauseAll / ResumeAll, for one VM (by name)
    t = held(held({}, "a", "A", PAUSE, Cause.LID), "b", "B", PAUSE, Cause.LID)
    t = add_cause(t, Cause.USER, only="A")
    assert t["a"].causes == LID | USER and t["b"].causes == LID
    ends = decide(State(), Event.RESUME_REQUESTED, t).ends
    after = release(t, ends, only="B")
    assert due(after) == ["b"] and after["a"].causes == LID | USER
    assert due(release(t, LID)) == ["b"]  # the lid opening: "a" stays paused by the user
    assert due(release(release(t, LID), ends, only="A")) == ["a", "b"]


def test_a_vm_whose_undo_failed_is_undone_on_reconnect_and_at_start():
    t = release(held({}, "a", "A", PAUSE, Cause.SLEEP), SLEEP)
    assert due(t) == ["a"] and t["a"] == Hold("A", PAUSE, frozenset())
    assert decide(State(), Event.RECONNECTED, t).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    assert decide(State(), Event.RECONNECTED, paused(Cause.USER)).actions == []
    assert decide(State(), Event.STARTED, t).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]


@pytest.mark.parametrize(("lid", "resumed"), [(LidState.OPEN, True), (LidState.ABSENT, True),
                                              (LidState.CLOSED, False)])
def test_start_resumes_what_sleep_or_the_lid_paused_unless_the_lid_is_closed(lid, resumed):
    # the daemon was killed (or restarted) while the host slept with the lid closed
    t = paused(Cause.LID, Cause.SLEEP)
    d = decide(State(lid=lid), Event.STARTED, t)
    assert bool(due(release(t, d.ends))) == resumed
    assert A.RESUME_VMS in d.actions  # (sleep ends in any case)


def test_start_keeps_a_pause_all():
    assert decide(State(lid=LidState.OPEN), Event.STARTED, paused(Cause.USER)).actions == []


def test_battery_critical_saves_only_on_battery_and_ac_restores():
    assert decide(State(source=PowerSource.AC), Event.BATTERY_CRITICAL, NONE).actions == []
    d = decide(State(source=PowerSource.BATTERY), Event.BATTERY_CRITICAL, NONE)
    assert d.actions == [A.SAVE_VMS] and d.adds == Cause.BATTERY
    t = paused(Cause.BATTERY, action=SAVE)
    d = decide(State(source=PowerSource.AC), Event.AC_ONLINE, t)
    assert d.actions == [A.RESTORE_VMS] and due(release(t, d.ends)) == ["a"]
    # a VM paused (not saved) for the battery is not AC's to restore
    assert decide(State(), Event.AC_ONLINE, paused(Cause.BATTERY)).actions == []


def test_a_vm_held_by_the_lid_and_saved_for_the_battery_waits_for_the_lid_too():
    t = held({}, "a", "A", PAUSE, Cause.LID)
    t = held(add_cause(t, Cause.BATTERY), "a", "A", SAVE, Cause.BATTERY, paused=True)
    assert due(release(t, {Cause.BATTERY})) == []
    assert due(release(release(t, {Cause.BATTERY}), LID)) == ["a"]


def test_ac_again_retries_a_refused_restore():
    # the key gate refused the restore (lease expired): the VM is held for no cause
    t = release(paused(Cause.BATTERY, action=SAVE), {Cause.BATTERY})
    assert decide(State(), Event.AC_ONLINE, t).actions == [A.RESTORE_VMS]


def test_ac_does_not_restore_when_configured_not_to():
    t = paused(Cause.BATTERY, action=SAVE)
    assert decide(State(restore_on_ac=False), Event.AC_ONLINE, t).actions == []


def test_shutdown_saves_and_start_restores_per_policy():
    d = decide(State(), Event.SHUTDOWN, NONE)
    assert d.actions == [A.SAVE_VMS] and d.adds == Cause.SHUTDOWN
    t = paused(Cause.SHUTDOWN, action=SAVE)
    assert decide(State(), Event.STARTED, t).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    assert decide(State(restore_on_start=False), Event.STARTED, t).actions == []
    assert decide(State(), Event.STARTED, NONE).actions == []


def test_no_lid_means_lid_action_ignore():
    assert State(lid=LidState.ABSENT).lid_action() == LidAction.IGNORE


def test_cause_labels_round_trip_and_unknown_ones_are_refused():
    for c in Cause:
        assert Cause.from_label(c.label) == c
    with pytest.raises(ValueError, match="unknown cause 'hibernate'"):
        Cause.from_label("hibernate")


def test_hold_actions_are_the_dbus_enum_and_the_state_file_words():
    assert [(a.label, int(a)) for a in HoldAction] == [
        ("unknown", 0), ("pause", 1), ("s3", 2), ("save", 3)]
    for a in (PAUSE, HoldAction.S3, SAVE):
        assert HoldAction.from_label(a.label) == a == HoldAction.of(VMPolicy(a.label))
    for bad in ("unknown", "ignore", "hibernate"):
        with pytest.raises(ValueError, match="unknown action"):
            HoldAction.from_label(bad)
    with pytest.raises(ValueError):
        HoldAction.of(VMPolicy.IGNORE)  # never held
