"""The power policy table: (state, event) -> actions, without I/O."""

from __future__ import annotations

import pytest

from vmclient.power.policy import (
    Action,
    Cause,
    Event,
    LidAction,
    LidPolicy,
    LidState,
    PowerSource,
    State,
    decide,
)

A = Action


def test_sleep_pauses_then_releases_the_lock():
    state, actions = decide(State(), Event.SLEEP)
    assert actions == [A.PAUSE_VMS, A.RELEASE_SLEEP_LOCK]
    assert state.paused_for == Cause.SLEEP


def test_wake_after_sleep_takes_the_lock_resumes_and_syncs_clocks():
    state, actions = decide(State(paused_for=Cause.SLEEP), Event.WOKE)
    assert actions == [A.TAKE_SLEEP_LOCK, A.RESUME_VMS, A.SYNC_CLOCKS]
    assert state.paused_for == Cause.NONE


def test_wake_keeps_vms_the_user_paused_through_the_api():
    state, actions = decide(State(paused_for=Cause.USER), Event.WOKE)
    assert actions == [A.TAKE_SLEEP_LOCK]
    assert state.paused_for == Cause.USER


@pytest.mark.parametrize(("source", "docked", "policy", "expected"), [
    (PowerSource.AC, False, LidPolicy(), [A.PAUSE_VMS, A.SUSPEND_HOST]),
    (PowerSource.BATTERY, False, LidPolicy(on_battery=LidAction.PAUSE), [A.PAUSE_VMS]),
    (PowerSource.AC, False, LidPolicy(on_ac=LidAction.IGNORE), []),
    (PowerSource.AC, True, LidPolicy(), []),  # docked: ignore by default
    (PowerSource.AC, True, LidPolicy(docked=LidAction.SUSPEND), [A.PAUSE_VMS, A.SUSPEND_HOST]),
    (PowerSource.AC, False, LidPolicy(own_lid=False), []),  # logind decides
])
def test_lid_close_follows_the_lid_policy(source, docked, policy, expected):
    s = State(lid=LidState.OPEN, source=source, docked=docked, lid_policy=policy)
    _, actions = decide(s, Event.LID_CLOSED)
    assert actions == expected


def test_lid_open_resumes_only_what_the_lid_paused():
    _, actions = decide(State(paused_for=Cause.LID), Event.LID_OPENED)
    assert actions == [A.RESUME_VMS, A.SYNC_CLOCKS]
    _, actions = decide(State(paused_for=Cause.USER), Event.LID_OPENED)
    assert actions == []
    _, actions = decide(State(), Event.LID_OPENED)
    assert actions == []


def test_lid_close_then_sleep_keeps_the_lid_as_the_cause():
    s, _ = decide(State(lid=LidState.CLOSED), Event.LID_CLOSED)
    s, _ = decide(s, Event.SLEEP)
    assert s.paused_for == Cause.LID
    s, actions = decide(s, Event.WOKE)
    assert A.RESUME_VMS in actions


def test_battery_critical_saves_only_on_battery_and_ac_restores():
    _, actions = decide(State(source=PowerSource.AC), Event.BATTERY_CRITICAL)
    assert actions == []
    s, actions = decide(State(source=PowerSource.BATTERY), Event.BATTERY_CRITICAL)
    assert actions == [A.SAVE_VMS] and s.saved_for == Cause.BATTERY
    s, actions = decide(s, Event.AC_ONLINE)
    assert actions == [A.RESTORE_VMS] and s.saved_for == Cause.NONE


def test_ac_does_not_restore_when_configured_not_to():
    s = State(saved_for=Cause.BATTERY, restore_on_ac=False)
    assert decide(s, Event.AC_ONLINE)[1] == []


def test_shutdown_saves_and_start_restores_per_policy():
    s, actions = decide(State(), Event.SHUTDOWN)
    assert actions == [A.SAVE_VMS] and s.saved_for == Cause.SHUTDOWN
    assert decide(s, Event.STARTED)[1] == [A.RESTORE_VMS]
    assert decide(State(saved_for=Cause.SHUTDOWN, restore_on_start=False), Event.STARTED)[1] == []
    assert decide(State(), Event.STARTED)[1] == []


def test_no_lid_means_lid_action_ignore():
    assert State(lid=LidState.ABSENT).lid_action() == LidAction.IGNORE
