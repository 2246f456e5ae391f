"""The power policy tables: (state, event) -> actions and per-VM causes, without I/O."""

from __future__ import annotations

import pytest

from vmclient.power.policy import (
    Action,
    Cause,
    Event,
    Hold,
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


def test_sleep_pauses_then_releases_the_lock():
    d = decide(State(), Event.SLEEP)
    assert d.actions == [A.PAUSE_VMS, A.RELEASE_SLEEP_LOCK]
    assert d.adds == Cause.SLEEP and d.state.paused_for == SLEEP


def test_wake_after_sleep_takes_the_lock_resumes_and_syncs_clocks():
    d = decide(State(lid=LidState.OPEN, paused_for=SLEEP), Event.WOKE)
    assert d.actions == [A.TAKE_SLEEP_LOCK, A.RESUME_VMS, A.SYNC_CLOCKS]
    assert d.ends == SLEEP | LID and d.state.paused_for == frozenset()


def test_wake_keeps_vms_the_user_paused_through_the_api():
    d = decide(State(paused_for=USER), Event.WOKE)
    assert d.actions == [A.TAKE_SLEEP_LOCK]
    assert d.state.paused_for == USER


def test_wake_with_the_lid_still_closed_keeps_what_the_lid_paused():
    d = decide(State(lid=LidState.CLOSED, paused_for=LID | SLEEP), Event.WOKE)
    assert d.ends == SLEEP and d.state.paused_for == LID


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
    assert decide(s, Event.LID_CLOSED).actions == expected


def test_a_lid_closed_event_read_after_the_lid_reopened_does_nothing():
    # the bounce: by the time the event is handled the switch reads open again
    assert decide(State(lid=LidState.OPEN, source=PowerSource.AC), Event.LID_CLOSED).actions == []


def test_suspend_is_wanted_only_while_the_lid_stays_closed():
    closed = State(lid=LidState.CLOSED, source=PowerSource.AC)
    assert suspend_wanted(closed)
    assert not suspend_wanted(State(lid=LidState.OPEN, source=PowerSource.AC))
    assert not suspend_wanted(State(lid=LidState.CLOSED, lid_policy=LidPolicy(on_ac=LidAction.PAUSE),
                                    source=PowerSource.AC))


def test_lid_open_resumes_only_what_the_lid_paused():
    d = decide(State(paused_for=LID), Event.LID_OPENED)
    assert d.actions == [A.RESUME_VMS, A.SYNC_CLOCKS] and d.ends == LID
    assert decide(State(paused_for=USER), Event.LID_OPENED).actions == []
    assert decide(State(), Event.LID_OPENED).actions == []


def test_lid_close_then_sleep_then_wake_with_the_lid_open_resumes():
    d = decide(State(lid=LidState.CLOSED, source=PowerSource.AC), Event.LID_CLOSED)
    d = decide(d.state, Event.SLEEP)
    assert d.state.paused_for == LID | SLEEP
    d = decide(replace_lid(d.state, LidState.OPEN), Event.WOKE)
    assert A.RESUME_VMS in d.actions and d.state.paused_for == frozenset()


def replace_lid(s: State, lid: LidState) -> State:
    from dataclasses import replace

    return replace(s, lid=lid)


def test_causes_are_kept_per_vm_so_the_lid_does_not_resume_a_pause_all():
    # A paused by PauseAll, then B (started later) by the lid: the lid opening resumes B only
    t = held({}, "a", "A", VMPolicy.PAUSE, Cause.USER)
    t = held(t, "b", "B", VMPolicy.PAUSE, Cause.LID)
    d = decide(State(paused_for=causes_of(t, saved=False)), Event.LID_OPENED)
    assert d.actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    after = release(t, d.ends)
    assert due(after) == ["b"] and after["a"].causes == USER


def test_a_pause_all_over_a_lid_pause_outlives_the_lid():
    t = held({}, "b", "B", VMPolicy.PAUSE, Cause.LID)
    t = add_cause(t, Cause.USER)
    assert due(release(t, LID)) == []
    assert due(release(release(t, LID), decide(State(), Event.RESUME_REQUESTED).ends)) == ["b"]


def test_a_vm_whose_undo_failed_is_undone_on_reconnect_and_at_start():
    t = release(held({}, "a", "A", VMPolicy.PAUSE, Cause.SLEEP), SLEEP)
    assert due(t) == ["a"] and t["a"] == Hold("A", VMPolicy.PAUSE, frozenset())
    pending = State(undo_pending=True)
    assert decide(pending, Event.RECONNECTED).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    assert decide(State(), Event.RECONNECTED).actions == []
    assert decide(pending, Event.STARTED).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]


@pytest.mark.parametrize(("lid", "resumed"), [(LidState.OPEN, True), (LidState.ABSENT, True),
                                              (LidState.CLOSED, False)])
def test_start_resumes_what_sleep_or_the_lid_paused_unless_the_lid_is_closed(lid, resumed):
    # the daemon was killed (or restarted) while the host slept with the lid closed
    t = held({}, "a", "A", VMPolicy.PAUSE, Cause.LID)
    t = add_cause(t, Cause.SLEEP)
    d = decide(State(lid=lid, paused_for=causes_of(t, saved=False)), Event.STARTED)
    assert bool(due(release(t, d.ends))) == resumed
    assert A.RESUME_VMS in d.actions  # (sleep ends in any case)


def test_start_keeps_a_pause_all():
    assert decide(State(lid=LidState.OPEN, paused_for=USER), Event.STARTED).actions == []


def test_battery_critical_saves_only_on_battery_and_ac_restores():
    assert decide(State(source=PowerSource.AC), Event.BATTERY_CRITICAL).actions == []
    d = decide(State(source=PowerSource.BATTERY), Event.BATTERY_CRITICAL)
    assert d.actions == [A.SAVE_VMS] and d.state.saved_for == frozenset({Cause.BATTERY})
    d = decide(d.state, Event.AC_ONLINE)
    assert d.actions == [A.RESTORE_VMS] and d.state.saved_for == frozenset()


def test_a_vm_held_by_the_lid_and_saved_for_the_battery_waits_for_the_lid_too():
    t = held({}, "a", "A", VMPolicy.PAUSE, Cause.LID)
    t = held(add_cause(t, Cause.BATTERY), "a", "A", VMPolicy.SAVE, Cause.BATTERY, paused=True)
    assert due(release(t, {Cause.BATTERY})) == []
    assert due(release(release(t, {Cause.BATTERY}), LID)) == ["a"]


def test_ac_again_retries_a_refused_restore():
    # the key gate refused the restore (lease expired): the VM is held for no cause
    assert decide(State(undo_pending=True), Event.AC_ONLINE).actions == [A.RESTORE_VMS]


def test_ac_does_not_restore_when_configured_not_to():
    s = State(saved_for=frozenset({Cause.BATTERY}), restore_on_ac=False)
    assert decide(s, Event.AC_ONLINE).actions == []


def test_shutdown_saves_and_start_restores_per_policy():
    d = decide(State(), Event.SHUTDOWN)
    assert d.actions == [A.SAVE_VMS] and d.state.saved_for == frozenset({Cause.SHUTDOWN})
    assert decide(d.state, Event.STARTED).actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    assert decide(State(saved_for=frozenset({Cause.SHUTDOWN}), restore_on_start=False),
                  Event.STARTED).actions == []
    assert decide(State(), Event.STARTED).actions == []


def test_no_lid_means_lid_action_ignore():
    assert State(lid=LidState.ABSENT).lid_action() == LidAction.IGNORE


def test_cause_labels_round_trip_and_unknown_ones_are_refused():
    for c in Cause:
        assert Cause.from_label(c.label) == c
    with pytest.raises(ValueError, match="unknown cause 'hibernate'"):
        Cause.from_label("hibernate")
