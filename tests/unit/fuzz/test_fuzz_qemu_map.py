"""Fuzzing the readers of ``qemu-img map --output=json`` (``sync.disks``): the extents a
capture reads.  QEMU prints them, but what a capture reads must come from extents
of the right shape, or the capture fails with a :class:`LocalSyncError`."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.sync.disks import Extent, parse_dirty, parse_map

from .mutate import mutated_json, outcome

C = 1 << 20
MAP = [{"start": 0, "length": C, "depth": 0, "present": True, "zero": False, "data": True,
        "offset": 0},
       {"start": C, "length": C, "depth": 0, "present": True, "zero": True, "data": False,
        "offset": C},
       {"start": 2 * C, "length": 2 * C, "depth": 0, "present": False, "zero": False,
        "data": False}]


@given(st.sampled_from([parse_map, parse_dirty]), mutated_json(MAP))  # type: ignore[arg-type]
@example(parse_map, b'[{"start": 0}]')  # KeyError
@example(parse_map, b'{"start": 0}')  # TypeError (a table, not a list)
@example(parse_dirty, b'[{"start": "x", "length": 1, "zero": false, "data": false}]')
def test_qemu_img_map_output(parse: object, untrusted: bytes) -> None:
    result = outcome(parse, untrusted.decode("utf-8", "replace"))  # type: ignore[operator]
    if isinstance(result, list):
        assert all(isinstance(e, Extent) and e.start >= 0 and e.length >= 0 for e in result)


def test_the_seed_parses() -> None:
    assert [e.start for e in parse_map(json.dumps(MAP))] == [0, C, 2 * C]
