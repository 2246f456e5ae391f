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


def test_each_set_of_rounds_has_its_own_keys_and_scaling(fleet) -> None:  # type: ignore[no-untyped-def]
    def rnd(mib_s: float, cpu: float) -> dict[str, float]:
        return {"mib_s": mib_s, "p95_s": 1.0, "p95_done_s": 2.0, "requests_per_sync": 22.0,
                "mib": 60.0, "cpu_weed_s": cpu, "cpu_others_s": 0.5, "cores_busy": 1.0,
                "wall_s": 4.0, "cpu_idle_s": 3.0}
    rounds = {"v1_n10": rnd(7.0, 2.0), "v2_n10": rnd(13.3, 2.0)}
    placed = {"v2": {"volume0": {"volumes": 5, "volume_bytes": 30 << 20},
                     "volume1": {"volumes": 4, "volume_bytes": 31 << 20}}}
    emulated = fleet.summary(rounds, placed, 10, "")
    assert emulated["scale_1_to_2"] == 1.9
    assert emulated["fleet_v2_n10_mib_s"] == 13.3
    assert emulated["fleet_v2_mib_per_server"] == [30.0, 31.0]
    assert emulated["fleet_v2_volumes_per_server"] == [5, 4]
    shared = fleet.summary({"v1_n10": rnd(30.0, 2.0), "v2_n10": rnd(27.0, 2.0)}, {}, 10,
                           "_shared_host")
    assert shared["scale_1_to_2_shared_host"] == 0.9
    assert "scale_1_to_2" not in shared and set(emulated).isdisjoint(shared)
