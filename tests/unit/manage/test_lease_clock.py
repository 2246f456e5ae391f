"""The lease runs down on CLOCK_BOOTTIME (issue 13 §2.7): suspend time counts, so a laptop
suspended with its wall clock set back does not keep its lease."""

from __future__ import annotations

import inspect
import time
from pathlib import Path

import pytest

from vmclient.host import lease as state_mod
from vmclient.host.lease import DeviceState, StateFile, TimeRecord, boot_id, read_lease
from vmclient.manage.agent import Agent

T = 1_764_000_000
DAY = 86400
RECORDED = 1e12  # boottime when the record was written (above any real monotonic clock)


def test_a_week_suspended_with_the_clock_set_back_still_runs_the_lease_down(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    StateFile(tmp_path).save(DeviceState(device="d", enrolled=True, lease_until=T + 14 * DAY,
                                         clock=TimeRecord(T, boot_id(), RECORDED)))
    real = time.clock_gettime

    def clock_gettime(clock: int) -> float:  # 7 days suspended since the record
        return RECORDED + 7 * DAY if clock == time.CLOCK_BOOTTIME else real(clock)

    monkeypatch.setattr(time, "clock_gettime", clock_gettime)
    # the wall clock was set back a week meanwhile; the lease is read with the default clocks
    lease = read_lease(tmp_path, wall=lambda: T - 7 * DAY)
    assert lease.now == T + 7 * DAY and lease.remaining == 7 * DAY


def test_the_default_lease_clock_is_boottime() -> None:
    boottime = state_mod.boottime
    assert inspect.signature(Agent).parameters["mono"].default is boottime
    assert inspect.signature(read_lease).parameters["mono"].default is boottime
    # CLOCK_BOOTTIME = CLOCK_MONOTONIC + time suspended: never behind it
    before = time.monotonic()
    assert boottime() >= before
