"""The device key store: one reader of private files (0600 checked), one admin anchor format."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from vmclient.errors import ConfigError, VMClientError
from vmclient.host.gate import GateConfig, StartRefused, data_key
from vmclient.host.keys import (
    ADMIN_PUB,
    DeviceKeys,
    VMKeyError,
    VMKeys,
    pin_admin_key,
    pinned_admin_key,
    read_admin_key,
)
from vmclient.store import crypto


def test_the_admin_anchor_the_image_ships_as_pem_is_read(tmp_path: Path) -> None:
    """meta-vmclient installs the admin key as PEM (``openssl pkey -pubout``): the
    daemons read that, and raw bytes or base64 of them, as one key."""
    admin = crypto.Ed25519PrivateKey.generate().public_key()
    raw = crypto.raw_public(admin)
    pem = admin.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo)
    for name, content in (("pem", pem), ("raw", raw), ("b64", base64.b64encode(raw) + b"\n")):
        (tmp_path / name).write_bytes(content)
        key = read_admin_key(tmp_path / name)
        assert key is not None and crypto.raw_public(key) == raw, name
    assert read_admin_key(tmp_path / "absent") is None
    other = crypto.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "x25519").write_bytes(other)
    with pytest.raises(ConfigError, match="not an Ed25519 public key in PEM form"):
        read_admin_key(tmp_path / "x25519")
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        read_admin_key(tmp_path / "junk")


def test_the_pinned_admin_key_is_written_in_the_anchor_format_and_kept(tmp_path: Path) -> None:
    raw = crypto.raw_public(crypto.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ConfigError, match="enrol this laptop first"):
        pinned_admin_key(tmp_path)
    pin_admin_key(tmp_path, raw)
    assert (tmp_path / ADMIN_PUB).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert crypto.raw_public(pinned_admin_key(tmp_path)) == raw
    pin_admin_key(tmp_path, raw)  # the same key again: fine
    (tmp_path / ADMIN_PUB).write_bytes(raw)  # pinned by an earlier version: raw bytes
    assert crypto.raw_public(pinned_admin_key(tmp_path)) == raw
    other = crypto.raw_public(crypto.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(VMClientError, match="another admin key is pinned"):
        pin_admin_key(tmp_path, other)


def test_every_private_file_is_refused_when_others_may_read_it(tmp_path: Path) -> None:
    device = DeviceKeys.load_or_create(tmp_path / "device")
    vms = VMKeys(tmp_path / "state", device)
    keys = vms.create("office")
    assert vms.load("office").secret == keys.secret
    wrapped = vms.path("office")
    wrapped.chmod(0o644)
    with pytest.raises(VMKeyError, match="mode 644: must be 0600"):
        vms.load("office")
    cfg = GateConfig(tmp_path / "device", wrapped.parent, tmp_path / "manage")
    with pytest.raises(StartRefused, match="mode 644: must be 0600"):
        data_key(cfg, device, "office")
    wrapped.chmod(0o600)
    assert data_key(cfg, device, "office").secret == keys.secret
    (tmp_path / "device" / "signing.key").chmod(0o640)
    with pytest.raises(ConfigError, match="must be 0600"):
        device.signing()
