"""When a VM is synchronised: the pure decision, from facts the adapters gather.

A sync runs when it is due (the schedule: ``interval`` after the last
successful one, or at once when there is none) or asked for (``SyncNow``), and
nothing holds it back.  What holds it back, in this order:

1. the laptop is going to sleep, or the device is wiped or locked;
2. it is offline;
3. it runs on battery below ``min_battery_percent`` (on demand too, unless
   ``on_demand_overrides_battery``); with ``battery = false`` any battery use;
4. the link is metered and ``allow_metered`` is false (on demand too, unless
   ``on_demand_overrides_metered``);
5. the datacenter does not answer (probed last: it costs a connection).

The reason is shown to the user as it is (``vmclientctl sync status``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    interval: float = 3600.0  # seconds between scheduled syncs of one VM
    on_battery: bool = True  # sync on battery at all
    min_battery_percent: float = 30.0
    allow_metered: bool = False
    on_demand_overrides_battery: bool = False
    on_demand_overrides_metered: bool = True


@dataclass(frozen=True)
class Facts:
    """What the adapters saw (UPower, NetworkManager or the routing table, logind)."""

    online: bool = True
    on_battery: bool = False
    battery_percent: float | None = None  # None: UPower does not say
    metered: bool = False
    sleeping: bool = False
    business_refused: str = ""  # the lease/lock/wipe reason when business work is refused


def held_back(rules: Rules, facts: Facts, *, on_demand: bool) -> str:
    """Why a sync may not start now ('' = it may, once the datacenter answers)."""
    if facts.sleeping:
        return "the laptop is going to sleep"
    if facts.business_refused:
        return f"business work is refused ({facts.business_refused})"
    if not facts.online:
        return "offline"
    if facts.on_battery and not (on_demand and rules.on_demand_overrides_battery):
        if not rules.on_battery:
            return "on battery (sync on battery is off)"
        pct = facts.battery_percent
        if pct is not None and pct < rules.min_battery_percent:
            return f"on battery at {pct:.0f}% (below {rules.min_battery_percent:.0f}%)"
    if facts.metered and not rules.allow_metered and not (
            on_demand and rules.on_demand_overrides_metered):
        return "metered network"
    return ""


def next_run(rules: Rules, last_success: float | None, now: float) -> float:
    """When the schedule wants the next sync (wall clock; ``now`` if none was ever made)."""
    if last_success is None:
        return now
    return last_success + rules.interval


def due(rules: Rules, last_success: float | None, now: float) -> bool:
    return next_run(rules, last_success, now) <= now


def default_route_interfaces(route_table: str) -> set[str]:
    """Interfaces carrying a default route, from ``/proc/net/route``."""
    out = set()
    for line in route_table.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "00000000" and fields[7] == "00000000":
            out.add(fields[0])
    return out


# NetworkManager's NMMetered: 1 yes, 3 guess-yes are metered; 0 unknown, 2 no, 4 guess-no not.
NM_METERED = frozenset({1, 3})
NM_STATE_CONNECTED_LOCAL = 50  # NMState: 50 local, 60 site, 70 global


def facts_from_nm(state: int, metered: int) -> tuple[bool, bool]:
    """(online, metered) from NetworkManager's ``State`` and ``Metered``."""
    return state >= NM_STATE_CONNECTED_LOCAL, metered in NM_METERED


def facts_from_routes(route_table: str, metered_interfaces: tuple[str, ...]) -> tuple[bool, bool]:
    """(online, metered) without NetworkManager: default routes and the configured list."""
    up = default_route_interfaces(route_table)
    return bool(up), bool(up & set(metered_interfaces))
