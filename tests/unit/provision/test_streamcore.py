"""The pure core of a streamed restore (issue 19): which chunks a guest read covers, the
chunk cache, the read's patience, the spec file the nbdkit plugin trusts."""

from __future__ import annotations

import json

import pytest

from vmclient.provision.streamcore import (
    SPEC_VERSION,
    ChunkLRU,
    StreamSpec,
    StreamSpecError,
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
