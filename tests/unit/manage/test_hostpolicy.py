"""Is a host update due and allowed now (manage/hostpolicy.py): a table of facts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vmclient.manage.hostpolicy import (
    INSTALL,
    NONE,
    REFUSE,
    WAIT,
    HostFacts,
    Ordered,
    bucket,
    decide,
)
from vmclient.store.documents import HostBundle, HostSection, ImageVersion
from vmclient.store.hostformat import HostChannel


def bundles(*releases: str) -> tuple[HostBundle, ...]:
    return tuple(HostBundle(r, ImageVersion(i + 1, "a" * 64, 1, 0, "c" * 32))
                 for i, r in enumerate(releases))


def device_in(b: int, inside: bool) -> str:
    """A device id whose bucket is below (or not below) ``b``."""
    for i in range(10000):
        dev = f"{i:032x}"
        if (bucket(dev) < b) == inside:
            return dev
    raise AssertionError


SECTION = HostSection(bundles("1.0", "2.0", "3.0"), {"stable": HostChannel("2.0", 50),
                                                    "testing": HostChannel("3.0", 100)})
FACTS = HostFacts(device_in(50, True), "stable", "1.0", on_battery=False, metered=False)


@pytest.mark.parametrize(("change", "action", "release", "reason"), [
    ({}, INSTALL, "2.0", "channel stable: 1.0 -> 2.0"),
    ({"device": device_in(50, False)}, NONE, "2.0", "not in the 50 % rollout"),
    ({"channel": "testing"}, INSTALL, "3.0", ""),
    ({"on_battery": True}, WAIT, "2.0", "on battery"),
    ({"metered": True}, WAIT, "2.0", "metered"),
    ({"running": "2.0"}, NONE, "2.0", "running 2.0 already"),
    ({"installed": "2.0"}, NONE, "2.0", "restart to run it"),
    ({"failed": frozenset({"2.0"})}, NONE, "2.0", "failed before"),
    ({"running": "2.5"}, NONE, "2.0", "no downgrade without an order"),
    ({"ordered": Ordered("3.0")}, INSTALL, "3.0", "order"),
    ({"ordered": Ordered("3.0"), "device": device_in(50, False)}, INSTALL, "3.0", ""),
    ({"ordered": Ordered("3.0"), "failed": frozenset({"3.0"})}, INSTALL, "3.0", ""),
    ({"ordered": Ordered("3.0"), "on_battery": True}, WAIT, "3.0", "battery"),
    ({"ordered": Ordered("1.0"), "running": "2.0"}, REFUSE, "1.0", "downgrade needs"),
    ({"ordered": Ordered("1.0", downgrade=True), "running": "2.0"}, INSTALL, "1.0", ""),
    ({"ordered": Ordered("9.0")}, REFUSE, "9.0", "not published"),
])
def test_decide(change: dict, action: str, release: str, reason: str) -> None:  # type: ignore[type-arg]
    d = decide(SECTION, replace(FACTS, **change))
    assert (d.action, d.release) == (action, release), d
    assert reason in d.reason


def test_no_catalog_section_means_nothing_to_do() -> None:
    assert decide(None, FACTS).action == NONE


def test_raising_the_rollout_only_adds_devices() -> None:
    devices = [f"{i:032x}" for i in range(400)]
    share = {pct: {d for d in devices if bucket(d) < pct} for pct in (0, 10, 50, 100)}
    assert share[0] == set() and share[100] == set(devices)
    assert share[10] <= share[50] and 0.3 < len(share[50]) / len(devices) < 0.7
