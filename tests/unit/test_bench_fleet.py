"""bench/s3_fleet.py's pure helpers: the quantile and a round's aggregate figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "s3_fleet.py"


@pytest.fixture(scope="module")
def fleet():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_s3_fleet", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path  # (it puts bench/ and tests/integration first)
    return module


def test_p95_is_the_nearest_rank(fleet) -> None:  # type: ignore[no-untyped-def]
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert fleet.p(values, 0.95) == 19.0
    assert fleet.p(values, 0.5) == 10.0
    assert fleet.p(list(reversed(values)), 1.0) == 20.0
    assert fleet.p([7.0], 0.95) == 7.0
    assert fleet.p([], 0.95) == 0.0


def test_a_round_is_summed_from_the_release_to_the_last_completion(fleet) -> None:  # type: ignore[no-untyped-def]
    mib = 1 << 20
    results = [{"start": 100.0, "end": 102.0, "seconds": 2.0, "bytes": 10 * mib,
                "requests": 20},
               {"start": 101.0, "end": 104.0, "seconds": 3.0, "bytes": 30 * mib,
                "requests": 24}]
    s = fleet.round_summary(results, released=100.0)
    assert s["wall_s"] == 4.0 and s["mib"] == 40.0 and s["mib_s"] == 10.0
    assert s["p95_s"] == 3.0 and s["p50_s"] == 2.0 and s["p95_done_s"] == 4.0
    assert s["requests_per_sync"] == 22.0


def test_a_device_is_confined_to_its_own_directory(fleet) -> None:  # type: ignore[no-untyped-def]
    actions = fleet.device_actions("vmclient", "fleet1", "ab" * 16)
    assert actions == [f"{a}:vmclient/fleet1/devices/{'ab' * 16}/*"
                       for a in ("Read", "Write", "List")]
