"""Which snapshots a retention policy keeps (pure): keep last N, daily, weekly.

Like restic's ``forget --keep-last/--keep-daily/--keep-weekly``: the newest
``last`` snapshots; then, for each of the newest ``daily`` UTC days that have
snapshots, the newest of that day; likewise for ISO weeks.  The newest
snapshot is always kept.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Retention:
    last: int = 3
    daily: int = 7
    weekly: int = 4


def kept(snapshots: Iterable[tuple[int, int]], policy: Retention) -> set[int]:
    """``snapshots`` are (seq, created Unix seconds); returns the seqs to keep."""
    newest_first = sorted(snapshots, key=lambda s: (s[1], s[0]), reverse=True)
    keep = {seq for seq, _t in newest_first[:max(1, policy.last)]}
    for count, bucket in ((policy.daily, _day), (policy.weekly, _week)):
        seen: set[tuple[int, int]] = set()
        for seq, created in newest_first:
            b = bucket(created)
            if b in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(b)
            keep.add(seq)
    return keep


def _day(t: int) -> tuple[int, int]:
    d = datetime.datetime.fromtimestamp(t, datetime.UTC).date()
    return d.year, d.timetuple().tm_yday


def _week(t: int) -> tuple[int, int]:
    iso = datetime.datetime.fromtimestamp(t, datetime.UTC).date().isocalendar()
    return iso.year, iso.week
