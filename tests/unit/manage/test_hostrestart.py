"""When a laptop restarts into an installed host update by itself (manage/hostrestart.py):
IT's maintenance window, local wall-clock time, crossing midnight, held back by battery,
a user at work or a postponement."""

from __future__ import annotations

from datetime import datetime

import pytest

from vmclient.manage.hostrestart import (
    LATER,
    NEVER,
    NOW,
    WAIT_AC,
    WAIT_IDLE,
    BadPostponement,
    BadWindow,
    Window,
    plan,
    postponed,
)

NIGHT = Window.parse("22:30-05:00")  # crosses midnight
EARLY = Window.parse("02:00-04:30")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def go(now: str, window: Window | None = EARLY, **kw: object):  # type: ignore[no-untyped-def]
    facts = {"pending": True, "user_active": False, "on_ac": True, **kw}
    return plan(at(now), window, **facts)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["2:00-4:00", "02:00-24:00", "02:60-03:00", "02:00",
                                  "02:00-03:00 ", "", "03:00-03:00", "02:00\u201304:00"])
def test_a_window_that_is_not_hh_mm_hh_mm_is_refused_saying_so(text: str) -> None:
    with pytest.raises(BadWindow, match="Maintenance window"):
        Window.parse(text)


def test_no_update_waiting_or_no_window_means_no_restart_by_itself() -> None:
    assert go("2026-12-07 03:00", pending=False).action == NEVER
    d = go("2026-12-07 03:00", window=None)
    assert (d.action, d.at) == (NEVER, None) and "no maintenance window" in d.reason


@pytest.mark.parametrize(("now", "action", "start"), [
    ("2026-12-07 01:59:59", LATER, "2026-12-07 02:00"),
    ("2026-12-07 02:00", NOW, "2026-12-07 02:00"),
    ("2026-12-07 04:29:59", NOW, "2026-12-07 02:00"),
    ("2026-12-07 04:30", LATER, "2026-12-08 02:00"),  # the end is excluded
    ("2026-12-07 23:00", LATER, "2026-12-08 02:00"),
])
def test_a_window_within_one_day(now: str, action: str, start: str) -> None:
    d = go(now)
    assert (d.action, d.at) == (action, at(start)), d


@pytest.mark.parametrize(("now", "action", "start", "end"), [
    ("2026-12-07 22:29", LATER, "2026-12-07 22:30", "2026-12-08 05:00"),
    ("2026-12-07 22:30", NOW, "2026-12-07 22:30", "2026-12-08 05:00"),
    ("2026-12-07 23:59:59", NOW, "2026-12-07 22:30", "2026-12-08 05:00"),
    ("2026-12-08 00:00", NOW, "2026-12-07 22:30", "2026-12-08 05:00"),  # began yesterday
    ("2026-12-08 04:59", NOW, "2026-12-07 22:30", "2026-12-08 05:00"),
    ("2026-12-08 05:00", LATER, "2026-12-08 22:30", "2026-12-09 05:00"),
    ("2026-12-31 23:00", NOW, "2026-12-31 22:30", "2027-01-01 05:00"),  # a year's end
])
def test_a_window_crossing_midnight(now: str, action: str, start: str, end: str) -> None:
    d = go(now, NIGHT)
    assert (d.action, d.at, d.until) == (action, at(start), at(end)), d


def test_local_wall_clock_time_is_not_moved_by_a_dst_change() -> None:
    # 2027-03-28 is a 23-hour day in Europe, 2026-10-25 a 25-hour one: the window
    # still opens at 02:00 on the wall clock the next day
    assert go("2027-03-27 12:00").at == at("2027-03-28 02:00")
    assert go("2026-10-24 12:00").at == at("2026-10-25 02:00")
    assert go("2027-03-28 04:00").at == at("2027-03-28 02:00")


def test_on_battery_or_in_use_the_laptop_waits_within_the_window() -> None:
    d = go("2026-12-07 03:00", on_ac=False)
    assert (d.action, d.at) == (LATER, at("2026-12-07 02:00")) and "battery" in d.reason
    assert d.waiting == WAIT_AC
    d = go("2026-12-07 03:00", user_active=True)
    assert d.action == LATER and "in use" in d.reason and d.waiting == WAIT_IDLE
    assert go("2026-12-07 01:00", on_ac=False).waiting == ""  # not yet the window
    assert go("2026-12-07 01:00", on_ac=False, user_active=True).at == at("2026-12-07 02:00")


def test_a_postponement_moves_the_restart_to_the_first_window_time_after_it() -> None:
    d = go("2026-12-07 03:00", postponed_until=at("2026-12-07 04:00"))
    assert (d.action, d.at) == (LATER, at("2026-12-07 04:00")) and "postponed" in d.reason
    d = go("2026-12-07 03:00", postponed_until=at("2026-12-07 06:00"))
    assert (d.action, d.at) == (LATER, at("2026-12-08 02:00"))
    d = go("2026-12-07 23:00", NIGHT, postponed_until=at("2026-12-08 01:00"))
    assert (d.action, d.at, d.until) == (LATER, at("2026-12-08 01:00"), at("2026-12-08 05:00"))
    assert go("2026-12-07 04:00", postponed_until=at("2026-12-07 03:00")).action == NOW
    assert go("2026-12-07 04:00", postponed_until=at("2026-12-07 04:00")).action == NOW


def test_later_skips_the_window_it_is_in_or_that_opens_next_or_waits_the_seconds_asked(
        ) -> None:
    assert postponed(at("2026-12-07 03:00"), EARLY, 0) == at("2026-12-07 04:30")
    assert postponed(at("2026-12-07 12:00"), NIGHT, 0) == at("2026-12-08 05:00")
    assert postponed(at("2026-12-08 01:00"), NIGHT, 0) == at("2026-12-08 05:00")
    assert postponed(at("2026-12-07 03:00"), EARLY, 3600) == at("2026-12-07 04:00")
    d = go("2026-12-07 03:00", postponed_until=postponed(at("2026-12-07 03:00"), EARLY, 0))
    assert (d.action, d.at) == (LATER, at("2026-12-08 02:00"))
    with pytest.raises(BadPostponement, match="by 691200 seconds: it may wait at most 604800"):
        postponed(at("2026-12-07 03:00"), EARLY, 8 * 86400)


def test_each_later_skips_one_more_window_but_never_past_seven_days() -> None:
    now = at("2026-12-07 12:00")
    until = postponed(now, NIGHT, 0)
    assert until == at("2026-12-08 05:00")
    for day in range(9, 15):
        until = postponed(now, NIGHT, 0, until)
        assert until == at(f"2026-12-{day:02} 05:00")
    with pytest.raises(BadPostponement, match="past another window, to 2026-12-15 05:00: "
                       "it may wait at most 604800 seconds"):
        postponed(now, NIGHT, 0, until)  # the 15th at 05:00 is more than 7 days away
    assert postponed(now, NIGHT, 60, until) == at("2026-12-07 12:01")  # seconds: from now
    assert postponed(now, NIGHT, 0, at("2026-12-07 11:00")) == at("2026-12-08 05:00")
