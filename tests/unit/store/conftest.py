"""Fixtures for the repository-store unit tests: fixed keys, an in-memory store."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from vmclient.store import crypto
from vmclient.store.remote import MemoryStore


@pytest.fixture
def keys() -> crypto.KeySet:
    return crypto.KeySet.derive(bytes(range(32)))


@pytest.fixture
def admin() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)


@pytest.fixture
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)


@pytest.fixture
def device_id(device_key: Ed25519PrivateKey) -> str:
    return crypto.key_id(device_key.public_key())


@pytest.fixture
def device_x() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(b"\x04" * 32)


@pytest.fixture
def escrow_x() -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(b"\x05" * 32)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()
