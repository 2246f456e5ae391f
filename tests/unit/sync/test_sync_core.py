"""Pure parts of the synchronizer: retention, qemu-img map parsing, chunk coverage."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from vmclient.store.chunker import Chunk, Chunker
from vmclient.store.errors import LocalSyncError
from vmclient.sync import disks
from vmclient.sync.disks import (
    Extent,
    PartialChunk,
    covered_chunks,
    parse_dirty,
    parse_map,
    raw_chunks,
    read_chunks,
)
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


def test_parse_map_reads_all_but_zeros_at_guest_offsets() -> None:
    # qemu-img map over an NBD export (base:allocation), as QEMU 7.2 prints it
    untrusted = json.dumps([
        {"start": 0, "length": C, "depth": 0, "present": True, "zero": False, "data": True,
         "offset": 0},
        {"start": C, "length": C, "depth": 0, "present": True, "zero": True, "data": False,
         "offset": C},
        {"start": 2 * C, "length": 2 * C, "depth": 0, "present": True, "zero": False,
         "data": False},  # neither data nor zero: contents unknown, so read
    ])
    ext = parse_map(untrusted)
    assert ext == [Extent(0, C, False, 0), Extent(C, C, True, None),
                   Extent(2 * C, 2 * C, False, 2 * C)]
    cov = raw_chunks(ext, C, 4 * C)
    assert [i for i, (e, _w) in sorted(cov.items()) if e.offset is not None] == [0, 2, 3]


def test_parse_dirty_takes_the_inverted_bitmap() -> None:
    # qemu-img map with x-dirty-bitmap=qemu:dirty-bitmap:backup-vda, as QEMU 7.2 prints it
    untrusted = json.dumps([
        {"start": 0, "length": 2 * C, "depth": 0, "present": True, "zero": False, "data": True,
         "offset": 0},
        {"start": 2 * C, "length": C, "depth": 0, "present": False, "zero": False,
         "data": False},
        {"start": 3 * C, "length": C, "depth": 0, "present": True, "zero": False, "data": True,
         "offset": 3 * C},
        {"start": 4 * C, "length": 2 * C, "depth": 0, "present": False, "zero": False,
         "data": False},
    ])
    ext = parse_dirty(untrusted)
    assert ext == [Extent(2 * C, C, False, 2 * C), Extent(4 * C, 2 * C, False, 4 * C)]
    assert sorted(covered_chunks(ext, C, 6 * C)) == [2, 4, 5]


def test_read_chunks_reads_back_to_back_chunks_at_once(tmp_path) -> None:
    data = bytes(range(256)) * (7 * C // 256)
    f = tmp_path / "img"
    f.write_bytes(data)
    covered = raw_chunks([Extent(0, 2 * C, False, 0), Extent(2 * C, C, True, None),
                          Extent(3 * C, 4 * C, False, 3 * C)], C, 7 * C)
    calls: list[tuple[int, int]] = []

    def read_run(lengths: list[int], off: int) -> list[bytes]:
        calls.append((sum(lengths), off))
        out = []
        for n in lengths:
            out.append(data[off:off + n])
            off += n
        return out
    chunker = Chunker(b"k" * 32, C)
    got = list(read_chunks(f, covered, chunker, 7 * C, [read_run]))
    assert [c.index for c in got] == list(range(7))
    assert calls == [(2 * C, 0), (4 * C, 3 * C)]  # one read per run; the zero chunk not read
    assert got[2].is_zero and got[4].data == data[4 * C:5 * C]
    assert [c.id for c in got] == [c.id for c in read_chunks(f, covered, chunker, 7 * C)]


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


def test_read_chunks_raises_a_read_error_in_order_and_stops_reading(tmp_path,
                                                                   monkeypatch) -> None:
    monkeypatch.setattr(disks, "READ_RUN", C)  # one chunk per read
    covered = raw_chunks([Extent(0, 8 * C, False, 0)], C, 8 * C)
    calls: list[int] = []

    def read_run(lengths: list[int], off: int) -> list[bytes]:
        calls.append(off)
        if off == 5 * C:
            raise LocalSyncError("the export went away")
        return [bytes([1]) * n for n in lengths]

    def chunks() -> Iterator[Chunk]:
        return read_chunks(tmp_path / "x", covered, Chunker(b"k" * 32, C), 8 * C,
                           [read_run, read_run])
    got = []
    with pytest.raises(LocalSyncError, match="went away"):
        for c in chunks():
            got.append(c.index)
    assert got == [0, 1, 2, 3, 4]  # every chunk before the failed read, in order
    gen = chunks()
    calls.clear()
    assert next(gen).index == 0
    gen.close()  # the consumer stops: the readers end, nothing more is read
    assert len(calls) <= 1 + 2 * disks.PREFETCH  # the first read and the read-ahead
