"""Config, catalog, pointer and wrapped-key documents; freshness rules."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vmclient.store import crypto
from vmclient.store.documents import (
    Catalog,
    ImageVersion,
    Pointer,
    RepoConfig,
    WrappedKey,
    check_catalog_fresh,
    check_pointer_fresh,
)
from vmclient.store.errors import RemoteIntegrityError, UnsupportedVersion

REPO = "0123456789abcdef0123456789abcdef"


def catalog(serial: int = 5) -> Catalog:
    v = ImageVersion(3, "a" * 64, 1 << 30, 1764150000, "c" * 32)
    return Catalog(REPO, serial, 1764150000, {"win11-office": (v,)})


def test_config_round_trips_and_refuses_unknown_version() -> None:
    cfg = RepoConfig(REPO, 1764150000, 65536, b"\x01" * 32, b"\x02" * 32)
    assert RepoConfig.parse(cfg.to_bytes(), "config") == cfg
    doc = json.loads(cfg.to_bytes())
    doc["version"] = 2
    with pytest.raises(UnsupportedVersion, match="config 'config' at config has format version 2"):
        RepoConfig.parse(json.dumps(doc).encode(), "config")


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("chunk_size", 100000, "must be a power of two"),
    ("chunk_size", 4096, "out of range"),
    ("id_hash", "blake3", "expected 'hmac-sha256'"),
    ("admin_key", "AAAA", "has 3 bytes"),
])
def test_config_field_errors(field: str, value: object, problem: str) -> None:
    doc = json.loads(RepoConfig(REPO, 0, 65536, b"\x01" * 32, b"\x02" * 32).to_bytes())
    doc[field] = value
    with pytest.raises(RemoteIntegrityError, match=problem):
        RepoConfig.parse(json.dumps(doc).encode(), "config")


def test_catalog_round_trips_and_finds_versions() -> None:
    c = Catalog.parse(catalog().to_bytes(), REPO, "catalog")
    assert c == catalog()
    assert c.find("win11-office") == c.find("win11-office", 3)
    assert c.find("win11-office", 2) is None and c.find("nope") is None


def test_catalog_of_another_repository_is_refused() -> None:
    with pytest.raises(RemoteIntegrityError, match="'repository'"):
        Catalog.parse(catalog().to_bytes(), "f" * 32, "catalog")


def test_catalog_versions_must_increase() -> None:
    doc = json.loads(catalog().to_bytes())
    doc["images"][0]["versions"] *= 2
    with pytest.raises(RemoteIntegrityError, match=r"'images\[0\].versions': not strictly"):
        Catalog.parse(json.dumps(doc).encode(), REPO, "catalog")


def test_older_catalog_is_refused_as_replay() -> None:
    with pytest.raises(RemoteIntegrityError, match="serial 4 is older than serial 5"):
        check_catalog_fresh(catalog(4), "d1", 5, "d0", "catalog")
    check_catalog_fresh(catalog(5), "d0", 5, "d0", "catalog")  # same one again: fine
    check_catalog_fresh(catalog(6), "d2", 5, "d0", "catalog")


def test_two_catalogs_with_one_serial_are_refused() -> None:
    with pytest.raises(RemoteIntegrityError, match="two different catalogs carry serial 5"):
        check_catalog_fresh(catalog(5), "d1", 5, "d0", "catalog")


def test_pointer_round_trip_and_rollback() -> None:
    p = Pointer("office", "d" * 32, "0000000007", 7, 100, "e" * 64)
    assert Pointer.parse(p.to_bytes(), "office", "d" * 32, "x") == p
    with pytest.raises(RemoteIntegrityError, match="'vm'"):
        Pointer.parse(p.to_bytes(), "other", "d" * 32, "x")
    with pytest.raises(RemoteIntegrityError, match="seq 7 is older than seq 8"):
        check_pointer_fresh(p, 8, "x")


def test_wrapped_key_round_trip(keys: crypto.KeySet, device_x: X25519PrivateKey) -> None:
    w = WrappedKey.create("vm:office", device_x.public_key(), keys)
    again = WrappedKey.parse(w.to_bytes(), "vm:office", w.recipient, "k")
    assert again.unwrap(device_x, "k").secret == keys.secret


def test_wrapped_key_moved_to_another_vm_is_refused(keys: crypto.KeySet,
                                                    device_x: X25519PrivateKey) -> None:
    w = WrappedKey.create("vm:office", device_x.public_key(), keys)
    with pytest.raises(RemoteIntegrityError, match="'subject'"):
        WrappedKey.parse(w.to_bytes(), "vm:other", w.recipient, "k")
    relabelled = WrappedKey("vm:other", w.recipient, w.key_check, w.wrapped)
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        relabelled.unwrap(device_x, "k")


def test_wrapped_key_with_wrong_check_is_refused(keys: crypto.KeySet,
                                                 device_x: X25519PrivateKey) -> None:
    w = WrappedKey.create("vm:office", device_x.public_key(), keys)
    bad = WrappedKey(w.subject, w.recipient, "0" * 32, w.wrapped)
    with pytest.raises(RemoteIntegrityError, match="does not match its key check"):
        bad.unwrap(device_x, "k")
