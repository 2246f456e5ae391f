"""The pure core of a streamed restore (issue 19): which chunks a guest read covers, the
chunk cache, the read's patience, the spec file the nbdkit plugin trusts."""

from __future__ import annotations

import json

import pytest

from vmclient.provision.streamcore import (
    BATCH,
    FIRST_BATCH,
    PARALLEL,
    SHARE,
    SPEC_VERSION,
    ChunkLRU,
    FillProgress,
    ReadAhead,
    StreamSpec,
    StreamSpecError,
    Timeline,
    chunk_length,
    pieces,
    retry_delays,
)

C = 65536


def test_pieces_cover_a_read_across_chunk_boundaries_in_order() -> None:
    assert pieces(0, C, C, 4 * C) == [(0, 0, C)]
    assert pieces(C - 10, 20, C, 4 * C) == [(0, C - 10, 10), (1, 0, 10)]
    assert pieces(5, 2 * C, C, 4 * C) == [(0, 5, C - 5), (1, 0, C), (2, 0, 5)]
    assert pieces(3 * C, 0, C, 4 * C) == []
    # a short last chunk
    assert pieces(C, 100, C, C + 100) == [(1, 0, 100)]
    assert chunk_length(1, C, C + 100) == 100 and chunk_length(0, C, C + 100) == C


@pytest.mark.parametrize(("offset", "count"), [(-1, 10), (4 * C - 5, 10), (0, -1)])
def test_a_read_outside_the_disk_is_refused(offset: int, count: int) -> None:
    with pytest.raises(ValueError, match="outside"):
        pieces(offset, count, C, 4 * C)


def test_the_cache_drops_the_least_recently_used_chunk() -> None:
    lru = ChunkLRU(2)
    lru.put(1, b"a")
    lru.put(2, b"b")
    assert lru.get(1) == b"a"  # 1 is now the most recent
    lru.put(3, b"c")
    assert 2 not in lru and lru.get(1) == b"a" and lru.get(3) == b"c"
    assert len(lru) == 2
    with pytest.raises(ValueError):
        ChunkLRU(0)


def test_a_read_waits_at_most_the_timeout_backing_off() -> None:
    delays = list(retry_delays(30.0))
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6]
    assert max(delays) <= 5.0
    assert sum(delays) == pytest.approx(30.0)
    assert list(retry_delays(0.5)) == [0.2, pytest.approx(0.3)]


def spec(**kw: object) -> StreamSpec:
    doc: dict[str, object] = {"version": SPEC_VERSION, "config": "/etc/p.toml", "vm": "office",
                              "disk": "vda", "store": "devices/d/vms/office/store",
                              "size": 3 * C + 1, "chunk_size": C, "ids": "vda.ids",
                              "timeout": 30.0}
    doc.update(kw)
    return StreamSpec.parse(json.dumps(doc).encode(), "spec.json")


def test_the_spec_round_trips_and_its_ids_must_cover_the_disk() -> None:
    s = spec()
    assert StreamSpec.parse(s.to_json(), "x") == s
    assert s.chunks() == 4
    assert s.check_ids(bytes(128), "ids") == bytes(128)
    with pytest.raises(StreamSpecError, match="96 bytes of chunk ids, expected 128"):
        s.check_ids(bytes(96), "ids")


@pytest.mark.parametrize(("change", "problem"), [
    ({"version": 2}, "version 2"),
    ({"size": 0}, "size 0 is not a positive integer"),
    ({"size": True}, "size True"),
    ({"timeout": -1}, "timeout -1"),
    ({"vm": ""}, "vm '' is not a name"),
    ({"extra": 1}, "fields"),
])
def test_a_bad_spec_is_named(change: dict[str, object], problem: str) -> None:
    with pytest.raises(StreamSpecError, match=problem):
        spec(**change)
    with pytest.raises(StreamSpecError, match="not JSON"):
        StreamSpec.parse(b"{", "spec.json")


def test_every_progress_phase_has_its_dbus_enum_value() -> None:
    """provd reports the phases by their index: the D-Bus enum must name each (a streamed
    restore's Stream and Fill were missing: RestoreStreamed failed with 'STREAM')."""
    from vmclient.provision.progress import PHASES
    from vmclient.provision.service import Phase

    assert [p.name.lower() for p in Phase] == list(PHASES)


def test_the_read_ahead_starts_small_grows_on_a_fast_link_and_shrinks_on_a_slow_one() -> None:
    ahead = ReadAhead(30.0)
    assert (ahead.batch, ahead.window()) == (FIRST_BATCH, FIRST_BATCH * PARALLEL)
    ahead.landed(0.01, 4)  # 400 chunks/s: room for far more, but at most twice as many
    assert ahead.batch == 2 * FIRST_BATCH
    for _ in range(10):
        ahead.landed(0.01, ahead.batch)
    assert ahead.batch == BATCH and ahead.window() == BATCH * PARALLEL
    ahead.landed(1.0, 1, ok=False)  # a fetch gave up (the link dropped)
    assert ahead.batch == BATCH // 2
    # 2 chunks a second: in 15 s (half of 30) the window moves 30 chunks: 7 a fetch
    ahead.landed(5.0, 10)
    assert ahead.batch == 7 and ahead.window() * 5.0 / 10 <= 30.0 * SHARE
    ahead.landed(100.0, 1)  # a crawl: never nothing (the read itself still fetches)
    assert ahead.batch == 1


@pytest.mark.parametrize("kib_s", [16, 100, 150, 1000, 100_000])
def test_on_any_link_the_read_ahead_settles_within_half_the_read_timeout(kib_s: int) -> None:
    """The rule on a link of ``kib_s`` that the window's fetches share (each fetch takes
    the window's time): settled, the window lands within half the read timeout.  A fixed
    4 MiB a fetch, 4 in flight, took 164 s at 100 KiB/s: over the 30 s a read has."""
    timeout, rate = 30.0, kib_s * 1024
    ahead = ReadAhead(timeout)
    for _ in range(20):
        ahead.landed(ahead.window() * C / rate, ahead.batch)
    assert ahead.window() * C / rate <= timeout * SHARE or ahead.batch == 1
    if kib_s >= 150:
        assert ahead.batch >= 2  # a slow link still gets some read-ahead
    if kib_s >= 100_000:
        assert ahead.batch == BATCH


def test_a_read_ahead_refuses_a_nonsensical_setting() -> None:
    with pytest.raises(ValueError):
        ReadAhead(0)
    with pytest.raises(ValueError):
        ReadAhead(30.0, most=0)


def test_the_fill_progress_counts_every_disk_and_never_goes_back() -> None:
    """As provd saw a fill of a 256 MiB system disk and a 1 GiB user disk by hand: the
    system disk's pull completes (no longer backed), the user disk's pull fails on a
    dead link (backed, no job), then starts again from 0 (skipping what is local)."""
    M = 1 << 20
    fill = FillProgress({"vda": 256 * M, "vdb": 1024 * M})
    both = ["vda", "vdb"]
    assert fill.update(both, {}) == (0, 1280 * M)  # before the first pull
    assert fill.update(both, {"vda": (128 * M, 256 * M), "vdb": (0, 1024 * M)}) == \
        (128 * M, 1280 * M)
    # vda is local; only vdb's job is left: the total stays, vda counts whole
    assert fill.update(["vdb"], {"vdb": (100 * M, 1024 * M)}) == (356 * M, 1280 * M)
    assert fill.update(["vdb"], {}) == (356 * M, 1280 * M)  # the link dropped: no job
    assert fill.update(["vdb"], {"vdb": (10 * M, 1024 * M)}) == (356 * M, 1280 * M)
    assert fill.update(["vdb"], {"vdb": (512 * M, 1024 * M)}) == (768 * M, 1280 * M)
    assert fill.update([], {}) == (1280 * M, 1280 * M)  # every disk local


def test_the_fill_share_kept_for_the_next_provd_is_taken_up_never_going_back() -> None:
    """After a power loss the VM is off and no job tells how far its disks are: the next
    provd starts from the shares saved; a share a job then reports lower (a pull started
    again counts from 0) does not take it back, and junk in the file is ignored."""
    M = 1 << 20
    before = FillProgress({"vda": 256 * M, "vdb": 1024 * M})
    before.update(["vda", "vdb"], {"vda": (64 * M, 256 * M), "vdb": (256 * M, 1024 * M)})
    after = FillProgress({"vda": 256 * M, "vdb": 1024 * M})
    after.restore(before.to_json())
    assert after.counts() == (320 * M, 1280 * M)
    assert after.update(["vda", "vdb"], {"vda": (1 * M, 256 * M)}) == (320 * M, 1280 * M)
    for junk in (b"", b"[1]", b"{\"vda\": 2.0}", b"{\"vda\": -1}", b"{\"vda\": true}",
                 b"{\"vda\": NaN}", b"{\"vdz\": 0.5}", b"{\"vda\": \"0.5\"}", b"\xff"):
        fresh = FillProgress({"vda": 256 * M})
        fresh.restore(junk)
        assert fresh.counts() == (0, 256 * M), junk


def test_the_timeline_lists_overlapping_steps_in_the_order_they_began_and_the_total() -> None:
    now = [10.0]
    t = Timeline(clock=lambda: now[0])
    with t.step("catalog"):
        now[0] = 10.25
    a, b = t.step("nbdkit vda"), t.step("overlay vda")
    a.__enter__()
    b.__enter__()
    now[0] = 11.0
    a.__exit__(None, None, None)
    now[0] = 12.5
    b.__exit__(None, None, None)
    with pytest.raises(RuntimeError), t.step("start"):  # a failed step is still timed
        now[0] = 13.0
        raise RuntimeError("refused")
    assert t.summary() == ("catalog 0.00-0.25 s, nbdkit vda 0.25-1.00 s, overlay vda "
                           "0.25-2.50 s, start 2.50-3.00 s: 3.00 s")
