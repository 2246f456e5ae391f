"""When vmclient-syncd syncs: the policy table, the schedule, the network facts, sync.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.errors import ConfigError
from vmclient.store.chunker import ZERO_ID, Chunk
from vmclient.sync import config
from vmclient.sync.job import Hooks, SyncInterrupted
from vmclient.sync.plan import watched
from vmclient.sync.policy import (
    Facts,
    Rules,
    default_route_interfaces,
    due,
    facts_from_nm,
    facts_from_routes,
    held_back,
    next_run,
)

DATA = Path(__file__).resolve().parents[3] / "python-services" / "data"
R = Rules()  # 30 % threshold, metered refused, on demand overrides metered not battery
BATTERY_20 = Facts(on_battery=True, battery_percent=20.0)
METERED = Facts(metered=True)


@pytest.mark.parametrize(("rules", "facts", "on_demand", "reason"), [
    (R, Facts(), False, ""),
    (R, Facts(), True, ""),
    (R, Facts(online=False), True, "offline"),
    (R, Facts(sleeping=True, online=False), True, "the laptop is going to sleep"),
    (R, Facts(business_refused="IT locked business work on this laptop"), True,
     "business work is refused (IT locked business work on this laptop)"),
    (R, BATTERY_20, False, "on battery at 20% (below 30%)"),
    (R, BATTERY_20, True, "on battery at 20% (below 30%)"),
    (Rules(on_demand_overrides_battery=True), BATTERY_20, True, ""),
    (Rules(on_demand_overrides_battery=True), BATTERY_20, False, "on battery at 20% (below 30%)"),
    (R, Facts(on_battery=True, battery_percent=30.0), False, ""),
    (R, Facts(on_battery=True, battery_percent=None), False, ""),  # UPower does not say
    (Rules(on_battery=False), Facts(on_battery=True, battery_percent=99.0), False,
     "on battery (sync on battery is off)"),
    (R, Facts(on_battery=False, battery_percent=5.0), False, ""),  # on AC, charging
    (R, METERED, False, "metered network"),
    (R, METERED, True, ""),
    (Rules(on_demand_overrides_metered=False), METERED, True, "metered network"),
    (Rules(allow_metered=True), METERED, False, ""),
    (R, Facts(on_battery=True, battery_percent=10.0, metered=True), True,
     "on battery at 10% (below 30%)"),  # the first reason wins
])
def test_held_back(rules: Rules, facts: Facts, on_demand: bool, reason: str) -> None:
    assert held_back(rules, facts, on_demand=on_demand) == reason


def test_schedule() -> None:
    r = Rules(interval=3600)
    assert next_run(r, None, 1000.0) == 1000.0 and due(r, None, 1000.0)
    assert next_run(r, 1000.0, 1500.0) == 4600.0
    assert not due(r, 1000.0, 4599.0)
    assert due(r, 1000.0, 4600.0)


ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wwan0\t00000000\t0100A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t0000A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_network_facts_without_network_manager() -> None:
    assert default_route_interfaces(ROUTES) == {"wwan0"}
    assert facts_from_routes(ROUTES, ("wwan0",)) == (True, True)
    assert facts_from_routes(ROUTES, ("wlan0",)) == (True, False)
    assert facts_from_routes(ROUTES.replace("wwan0\t00000000", "wwan0\t0000A8C0"), ()) == \
        (False, False)  # no default route: offline


@pytest.mark.parametrize(("state", "metered", "expected"), [
    (70, 2, (True, False)), (70, 1, (True, True)), (70, 3, (True, True)),
    (60, 4, (True, False)), (50, 0, (True, False)), (20, 1, (False, True)),
])
def test_network_facts_from_network_manager(state: int, metered: int,
                                            expected: tuple[bool, bool]) -> None:
    assert facts_from_nm(state, metered) == expected


def test_shipped_sync_toml_is_the_defaults() -> None:
    shipped = DATA / "vmclient" / "sync.toml"
    assert shipped.exists()
    assert config.load(shipped) == config.SyncConfig()


def test_sync_toml_errors_name_file_and_key(tmp_path: Path) -> None:
    f = tmp_path / "sync.toml"
    f.write_text("[battery]\nmin_percent = 120\n")
    with pytest.raises(ConfigError, match=r"sync.toml: battery.min_percent: 120.0 is above"):
        config.load(f)
    f.write_text("[network]\nmetered_interfaces = \"wwan0\"\n")
    with pytest.raises(ConfigError, match=r"network.metered_interfaces: must be a list"):
        config.load(f)
    f.write_text("[schedule]\ninterval_minutes = 15\n[network]\nmetered_interfaces = "
                 "[\"wwan0\"]\n")
    cfg = config.load(f)
    assert cfg.rules().interval == 900 and cfg.network.metered_interfaces == ("wwan0",)


def test_engine_hooks_report_progress_and_stop_between_chunks() -> None:
    seen: list[tuple[int, int]] = []
    stop = False
    hooks = Hooks(lambda d, t: seen.append((d, t)), lambda: stop)
    chunks = iter([Chunk(0, b"a" * 32, b"x" * 4), Chunk(1, ZERO_ID, b""),
                   Chunk(2, b"b" * 32, b"y" * 2)])
    out = watched(chunks, "vm", hooks, 10, 4)
    assert next(out).index == 0
    assert next(out).index == 1  # a zero chunk counts its size
    stop = True
    with pytest.raises(SyncInterrupted, match="8 of 10 bytes read"):
        next(out)
    assert seen == [(0, 10), (4, 10), (8, 10)]
