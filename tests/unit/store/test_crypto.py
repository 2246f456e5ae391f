"""Crypto primitives: known answers, AAD binding, wrapping, signatures.

The vectors in tests/data/store-crypto-vectors.json change only with a deliberate
format change (and a new format version); regenerate them with
``PYTHONPATH=python-services/src:tests/unit python -m store.test_crypto``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError, UnsupportedVersion

from .helpers import flip

VECTORS = Path(__file__).parents[2] / "data" / "store-crypto-vectors.json"
SECRET = bytes(range(32))
NONCE = bytes(range(100, 112))
PLAINTEXT = b"vmclient known-answer plaintext\n" * 3


def compute_vectors() -> dict[str, str]:
    keys = crypto.KeySet.derive(SECRET)
    eph = X25519PrivateKey.from_private_bytes(b"\x07" * 32)
    recipient = X25519PrivateKey.from_private_bytes(b"\x04" * 32)
    signer = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    return {
        "secret": SECRET.hex(),
        "enc": keys.enc.hex(),
        "chunk_id_key": keys.chunk_id.hex(),
        "key_check": keys.check,
        "luks": keys.luks.hex(),
        "chunk_id": crypto.chunk_id(keys.chunk_id, PLAINTEXT).hex(),
        "sealed_chunk": crypto.seal(keys.enc, "chunk", "ab" * 32, PLAINTEXT, nonce=NONCE).hex(),
        "wrapped": crypto.wrap_key(recipient.public_key(), SECRET, "data-key", "vm:office",
                                   ephemeral=eph, nonce=NONCE).hex(),
        "signature": crypto.sign(signer, "catalog", "catalog", PLAINTEXT).hex(),
        "admin_key_id": crypto.key_id(signer.public_key()),
    }


def test_known_answers_match_the_recorded_vectors() -> None:
    assert compute_vectors() == json.loads(VECTORS.read_text())


def test_seal_is_aes_gcm_with_header_type_and_id_as_associated_data() -> None:
    """Independent of ``seal``: the byte layout repository-format.md specifies."""
    keys = crypto.KeySet.derive(SECRET)
    sealed = bytes.fromhex(json.loads(VECTORS.read_text())["sealed_chunk"])
    header = b"VMCS\x01"
    assert sealed[:5] == header and sealed[5:17] == NONCE
    aad = header + b"chunk\0" + ("ab" * 32).encode()
    assert AESGCM(keys.enc).decrypt(NONCE, sealed[17:], aad) == PLAINTEXT


def test_recorded_key_set_is_hkdf_sha256_with_the_documented_labels() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    recorded = json.loads(VECTORS.read_text())
    for field, label, size in (("enc", b"aead", 32), ("chunk_id_key", b"chunk-id", 32),
                               ("luks", b"luks", 32), ("key_check", b"key-check", 16)):
        derived = HKDF(hashes.SHA256(), size, None, b"vmclient/v1/" + label).derive(SECRET)
        assert derived.hex() == recorded[field], field


def test_recorded_wrapped_key_opens_with_the_documented_kek() -> None:
    """Independent of ``unwrap_key``: ECIES as repository-format.md §4 specifies."""
    from vmclient.store.crypto import hkdf, raw_public
    wrapped = bytes.fromhex(json.loads(VECTORS.read_text())["wrapped"])
    recipient = X25519PrivateKey.from_private_bytes(b"\x04" * 32)
    e_pub = wrapped[:32]
    shared = recipient.exchange(crypto.x25519_public(e_pub))
    kek = hkdf(shared, "wrap", salt=e_pub + raw_public(recipient.public_key()))
    sealed = wrapped[32:]
    aad = b"VMCS\x01" + b"data-key\0vm:office"
    assert AESGCM(kek).decrypt(sealed[5:17], sealed[17:], aad) == SECRET


def test_recorded_signature_covers_the_documented_message() -> None:
    sig = bytes.fromhex(json.loads(VECTORS.read_text())["signature"])
    signer = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32).public_key()
    signer.verify(sig, b"vmclient/v1/sig\0catalog\0catalog\0" + PLAINTEXT)


def test_chunk_id_is_hmac_sha256_under_the_derived_id_key() -> None:
    keys = crypto.KeySet.derive(SECRET)
    expected = hmac.new(keys.chunk_id, PLAINTEXT, hashlib.sha256).digest()
    assert crypto.chunk_id(keys.chunk_id, PLAINTEXT) == expected
    other = crypto.KeySet.derive(bytes(32))
    assert crypto.chunk_id(other.chunk_id, PLAINTEXT) != expected


def test_derived_keys_are_distinct_and_not_the_secret(keys: crypto.KeySet) -> None:
    derived = {keys.secret, keys.enc, keys.chunk_id, keys.luks}
    assert len(derived) == 4
    assert "check" in repr(keys) and keys.secret.hex() not in repr(keys)


def test_open_round_trips(keys: crypto.KeySet) -> None:
    sealed = crypto.seal(keys.enc, "index", "i1", b"payload")
    assert crypto.open_sealed(keys.enc, "index", "i1", sealed) == b"payload"


@pytest.mark.parametrize(("obj_type", "obj_id"), [("index", "i2"), ("manifest", "i1")])
def test_relabelled_or_moved_object_is_rejected(keys: crypto.KeySet, obj_type: str,
                                                obj_id: str) -> None:
    sealed = crypto.seal(keys.enc, "index", "i1", b"payload")
    with pytest.raises(RemoteIntegrityError) as err:
        crypto.open_sealed(keys.enc, obj_type, obj_id, sealed, path="x/y")
    assert (err.value.obj_type, err.value.obj_id, err.value.path) == (obj_type, obj_id, "x/y")
    assert "authentication failed" in str(err.value)


def test_every_flipped_byte_of_a_sealed_object_is_detected(keys: crypto.KeySet) -> None:
    sealed = crypto.seal(keys.enc, "chunk", "c1", b"0123456789")
    for pos in range(len(sealed)):
        with pytest.raises(RemoteIntegrityError) as err:
            crypto.open_sealed(keys.enc, "chunk", "c1", flip(sealed, pos))
        assert err.value.obj_id == "c1"


def test_unknown_seal_version_is_refused(keys: crypto.KeySet) -> None:
    sealed = bytearray(crypto.seal(keys.enc, "chunk", "c1", b"x"))
    sealed[4] = 2
    with pytest.raises(UnsupportedVersion, match="sealed-object version 2"):
        crypto.open_sealed(keys.enc, "chunk", "c1", bytes(sealed))


def test_truncated_sealed_object_is_rejected(keys: crypto.KeySet) -> None:
    with pytest.raises(RemoteIntegrityError, match="truncated"):
        crypto.open_sealed(keys.enc, "chunk", "c1", b"VMCS\x01" + bytes(20))


def test_wrapped_key_opens_only_for_its_recipient_and_subject(
        device_x: X25519PrivateKey, escrow_x: X25519PrivateKey) -> None:
    blob = crypto.wrap_key(device_x.public_key(), SECRET, "data-key", "vm:a")
    assert crypto.unwrap_key(device_x, blob, "data-key", "vm:a") == SECRET
    with pytest.raises(RemoteIntegrityError):
        crypto.unwrap_key(escrow_x, blob, "data-key", "vm:a")
    with pytest.raises(RemoteIntegrityError) as err:
        crypto.unwrap_key(device_x, blob, "data-key", "vm:b")
    assert err.value.obj_id == "vm:b"
    for pos in (0, 31, 32, 40, len(blob) - 1):
        with pytest.raises(RemoteIntegrityError):
            crypto.unwrap_key(device_x, flip(blob, pos), "data-key", "vm:a")


def test_low_order_ephemeral_key_is_rejected(device_x: X25519PrivateKey) -> None:
    blob = crypto.wrap_key(device_x.public_key(), SECRET, "data-key", "vm:a")
    with pytest.raises(RemoteIntegrityError):
        crypto.unwrap_key(device_x, bytes(32) + blob[32:], "data-key", "vm:a")


def test_signature_binds_type_and_id(admin: Ed25519PrivateKey) -> None:
    sig = crypto.sign(admin, "order", "dev/1", b"body")
    crypto.verify(admin.public_key(), sig, "order", "dev/1", b"body")
    for args in (("report", "dev/1", b"body"), ("order", "dev/2", b"body"),
                 ("order", "dev/1", b"bodY")):
        with pytest.raises(RemoteIntegrityError, match="bad signature"):
            crypto.verify(admin.public_key(), sig, *args)


if __name__ == "__main__":
    VECTORS.write_text(json.dumps(compute_vectors(), indent=2, sort_keys=True) + "\n")
