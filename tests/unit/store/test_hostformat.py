"""The catalog's host section (repository-format.md §8.9): round trip, refusals, releases."""

from __future__ import annotations

import json

import pytest

from vmclient.store.documents import Catalog, HostBundle, HostSection, ImageVersion
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.hostformat import HostChannel, compare
from vmclient.store.orders import Order

REPO = "0123456789abcdef0123456789abcdef"


def image(n: int) -> ImageVersion:
    return ImageVersion(n, f"{n:x}" * 64 if n < 16 else "a" * 64, 1 << 20, 1764150000, "c" * 32)


def catalog(host: HostSection | None) -> Catalog:
    return Catalog(REPO, 7, 1764150000, {"office": (image(1),)}, host)


def section() -> HostSection:
    return HostSection((HostBundle("2.0", image(1)), HostBundle("2.1", image(2))),
                       {"stable": HostChannel("2.0", 100, "22:30-05:00"),
                        "testing": HostChannel("2.1", 25)})


def test_a_catalog_without_host_bundles_is_byte_for_byte_what_it_was() -> None:
    old = json.loads(catalog(None).to_bytes())
    assert "host" not in old
    assert Catalog.parse(catalog(None).to_bytes(), REPO, "catalog").host is None


def test_the_host_section_round_trips() -> None:
    c = catalog(section())
    assert Catalog.parse(c.to_bytes(), REPO, "catalog") == c


def test_a_channel_without_a_maintenance_window_is_written_as_before() -> None:
    doc = json.loads(catalog(section()).to_bytes())
    stable, testing = doc["host"]["channels"]
    assert stable["maintenance"] == "22:30-05:00" and "maintenance" not in testing
    parsed = Catalog.parse(catalog(section()).to_bytes(), REPO, "catalog").host
    assert parsed is not None and parsed.channels["testing"].maintenance == ""


def mutated(change) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads(catalog(section()).to_bytes())
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("change", "problem"), [
    (lambda d: d["host"]["channels"].append({"name": "beta", "release": "2.0", "rollout": 1}),
     "'beta' is not one of"),
    (lambda d: d["host"]["channels"][0].update(release="9.9"), "not a published bundle"),
    (lambda d: d["host"]["channels"][0].update(rollout=101), "out of range"),
    (lambda d: d["host"]["bundles"][1].update(release="2.0"), "duplicate release"),
    (lambda d: d["host"]["bundles"][1].update(version=1), "not strictly increasing"),
    (lambda d: d["host"]["bundles"][0].update(release="2.0; rm -rf"), "does not match"),
    (lambda d: d["host"].update(extra=1), "unknown field"),
    (lambda d: d["host"]["channels"][0].update(maintenance="2:00-4:00"), "HH:MM-HH:MM"),
    (lambda d: d["host"]["channels"][0].update(maintenance="02:00-24:00"), "HH:MM-HH:MM"),
    (lambda d: d["host"]["channels"][0].update(maintenance="03:00-03:00"), "empty window"),
    (lambda d: d["host"]["channels"][0].update(maintenance=""), "HH:MM-HH:MM"),
    (lambda d: d["host"]["channels"][0].update(maintenance=300), "must be a string"),
    (lambda d: d["images"].append({"name": "host", "versions": []}), "reserved"),
])
def test_a_host_section_readers_must_refuse_is_refused(change, problem) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteIntegrityError, match=problem):
        Catalog.parse(mutated(change), REPO, "catalog")


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.10", "1.9", 1), ("2.0", "2", 0), ("2.0-rc1", "2.0", -1), ("2.0+1", "2.0", 1),
    ("2.0.1", "2.0", 1), ("1.0", "10.0", -1),
])
def test_releases_compare_by_their_numbers_then_the_suffix(a: str, b: str, expected: int) -> None:
    assert compare(a, b) == expected and compare(b, a) == -expected


def test_a_host_update_order_carries_a_release_and_an_optional_downgrade_flag() -> None:
    dev = "ab" * 16
    o = Order(dev, 3, 100, "host-update", {"release": "2.1"})
    assert Order.parse(o.to_bytes(), dev, 3, "p").args == {"release": "2.1", "downgrade": False}
    o = Order(dev, 3, 100, "host-update", {"release": "1.0", "downgrade": True})
    assert Order.parse(o.to_bytes(), dev, 3, "p").args["downgrade"] is True
    snap = Order(dev, 3, 100, "host-update", {"release": "1.0+snapshot-20261206"})
    assert Order.parse(snap.to_bytes(), dev, 3, "p").args["release"] == "1.0+snapshot-20261206"
    bad = Order(dev, 3, 100, "host-update", {"release": "../x"})
    with pytest.raises(RemoteIntegrityError, match="does not match"):
        Order.parse(bad.to_bytes(), dev, 3, "p")


def test_a_host_update_order_may_carry_this_devices_maintenance_window() -> None:
    dev = "ab" * 16
    o = Order(dev, 3, 100, "host-update", {"release": "2.1", "maintenance": "22:30-05:00"})
    assert Order.parse(o.to_bytes(), dev, 3, "p").args == {
        "release": "2.1", "downgrade": False, "maintenance": "22:30-05:00"}
    assert b"maintenance" not in Order(dev, 3, 100, "host-update", {"release": "2.1"}).to_bytes()
    for window, problem in (("25:00-01:00", "does not match"), ("01:00-01:00", "equal"),
                            ("", "does not match")):
        bad = Order(dev, 3, 100, "host-update", {"release": "2.1", "maintenance": window})
        with pytest.raises(RemoteIntegrityError, match=f"'args.maintenance'.*{problem}"):
            Order.parse(bad.to_bytes(), dev, 3, "p")
    other = Order(dev, 3, 100, "lock", {"maintenance": "01:00-02:00"})
    with pytest.raises(RemoteIntegrityError, match="unknown field"):
        Order.parse(other.to_bytes(), dev, 3, "p")
