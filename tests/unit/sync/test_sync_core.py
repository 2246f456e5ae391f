"""Pure parts of the synchronizer: retention, qemu-img map parsing, chunk coverage."""

from __future__ import annotations

import json

import pytest

from vmclient.sync.disks import Extent, PartialChunk, covered_chunks, parse_map, raw_chunks
from vmclient.sync.retention import Retention, kept

DAY = 86400
C = 65536


def test_keep_last_daily_weekly() -> None:
    # two snapshots a day for 30 days (day 0 is a Thursday, 1970-01-01)
    snaps = [(2 * d + h + 1, d * DAY + h * 3600) for d in range(30) for h in (0, 1)]
    assert kept(snaps, Retention(last=3, daily=0, weekly=0)) == {60, 59, 58}
    daily = kept(snaps, Retention(last=1, daily=3, weekly=0))
    assert daily == {60, 58, 56}  # newest of each of the last three days
    weekly = kept(snaps, Retention(last=0, daily=0, weekly=2))
    assert 60 in weekly and len(weekly) == 2  # newest overall is always kept


def test_keep_at_least_newest() -> None:
    assert kept([(1, 10), (2, 20)], Retention(0, 0, 0)) == {2}


def test_parse_map_keeps_depth_zero_only() -> None:
    untrusted = json.dumps([
        {"start": 0, "length": C, "depth": 1, "present": True, "zero": False, "data": True,
         "offset": 4 * C},
        {"start": C, "length": C, "depth": 0, "present": True, "zero": True, "data": False},
        {"start": 2 * C, "length": 2 * C, "depth": 0, "present": True, "zero": False,
         "data": True, "offset": 9 * C},
        {"start": 4 * C, "length": C, "depth": 1, "present": False, "zero": True, "data": False},
    ])
    ext = parse_map(untrusted)
    assert ext == [Extent(C, C, True, None), Extent(2 * C, 2 * C, False, 9 * C)]
    cov = covered_chunks(ext, C, 5 * C)
    assert sorted(cov) == [1, 2, 3]
    assert cov[3] == (ext[1], C)


def test_partial_chunk_needs_a_full_read() -> None:
    with pytest.raises(PartialChunk):
        covered_chunks([Extent(0, 4096, False, 0)], C, 10 * C)
    # the short last chunk of a disk is fine
    assert sorted(covered_chunks([Extent(C, C // 2, False, 0)], C, C + C // 2)) == [1]


def test_raw_chunks_follow_holes() -> None:
    cov = raw_chunks([Extent(0, 4096, False, 0), Extent(4096, 3 * C - 4096, True, None),
                      Extent(3 * C, 100, False, 3 * C)], C, 3 * C + 100)
    assert [cov[i][0].zero for i in range(4)] == [False, True, True, False]
    assert cov[3][0].length == 100
