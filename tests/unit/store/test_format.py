"""Canonical JSON, strict readers, payload codec and signed envelopes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError, UnsupportedVersion
from vmclient.store.format import (
    ENVELOPE_HEADER,
    Reader,
    canonical_json,
    decode_payload,
    encode_payload,
    open_envelope,
    signed_envelope,
)

from .helpers import flip


def test_canonical_json_sorts_keys_and_has_no_whitespace() -> None:
    assert canonical_json({"b": 1, "a": ["x", {"d": 2, "c": "é"}]}) == \
        '{"a":["x",{"c":"é","d":2}],"b":1}'.encode()


def test_canonical_json_refuses_floats() -> None:
    with pytest.raises(TypeError, match="floats"):
        canonical_json({"a": {"b": 1.5}})


def reader(doc: object) -> Reader:
    return Reader(doc, "catalog", "catalog", "repo/catalog")


def test_reader_errors_name_object_path_and_dotted_field() -> None:
    r = reader({"images": [{"name": 5}]})
    with pytest.raises(RemoteIntegrityError) as err:
        r.tables("images")[0].text("name")
    msg = str(err.value)
    assert "catalog 'catalog' at repo/catalog" in msg
    assert "field 'images[0].name': must be a string, not int" in msg


def test_reader_refuses_missing_unknown_and_bool_as_int() -> None:
    with pytest.raises(RemoteIntegrityError, match="'serial': missing"):
        reader({}).integer("serial")
    with pytest.raises(RemoteIntegrityError, match="'serial': must be a whole number"):
        reader({"serial": True}).integer("serial")
    r = reader({"a": 1, "zz": 2})
    r.integer("a")
    with pytest.raises(RemoteIntegrityError, match="'zz': unknown field"):
        r.done()


def test_reader_refuses_unknown_version() -> None:
    with pytest.raises(UnsupportedVersion, match="format version 2"):
        reader({"version": 2}).version({1})


def test_reader_b64_checks_size_and_alphabet() -> None:
    with pytest.raises(RemoteIntegrityError, match="not base64"):
        reader({"k": "!!!"}).b64("k")
    with pytest.raises(RemoteIntegrityError, match="has 3 bytes, expected 32"):
        reader({"k": "AAAA"}).b64("k", size=32)


def test_reader_parse_refuses_non_json() -> None:
    with pytest.raises(RemoteIntegrityError, match="not JSON"):
        Reader.parse(b"\xff{", "catalog", "catalog", "p")
    with pytest.raises(RemoteIntegrityError, match="must be an object"):
        Reader.parse(b"[]", "catalog", "catalog", "p")


def test_payload_codec_compresses_only_when_it_helps() -> None:
    text = b"a" * 10000
    packed = encode_payload(text)
    assert packed[0] == 1 and len(packed) < 100
    assert decode_payload(packed, "t", "i", "p") == text
    noise = bytes(range(256))
    assert encode_payload(noise)[0] == 0
    assert encode_payload(text, None) == b"\0" + text


def test_payload_codec_refuses_unknown_codec_and_bombs() -> None:
    with pytest.raises(UnsupportedVersion, match="payload codec 9"):
        decode_payload(b"\x09abc", "t", "i", "p")
    with pytest.raises(RemoteIntegrityError):
        decode_payload(encode_payload(bytes(1 << 20)), "t", "i", "p", limit=1000)


def test_envelope_verifies_and_names_the_signer(admin: Ed25519PrivateKey) -> None:
    blob = signed_envelope(admin, "catalog", "catalog", b"body")
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}
    assert open_envelope(signers, blob, "catalog", "catalog", "p") == (
        crypto.key_id(admin.public_key()), b"body")


def test_envelope_every_flipped_byte_is_detected(admin: Ed25519PrivateKey) -> None:
    blob = signed_envelope(admin, "order", "d/1", b'{"seq":1}')
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}
    for pos in range(len(blob)):
        with pytest.raises(RemoteIntegrityError):
            open_envelope(signers, flip(blob, pos), "order", "d/1", "p")


def test_envelope_from_another_key_is_refused(admin: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    blob = signed_envelope(other, "catalog", "catalog", b"body")
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}
    with pytest.raises(RemoteIntegrityError, match="signed by unknown key"):
        open_envelope(signers, blob, "catalog", "catalog", "p")
    # a forged signer id with another key's signature fails the signature check
    forged = blob[:5] + bytes.fromhex(crypto.key_id(admin.public_key())) + blob[21:]
    with pytest.raises(RemoteIntegrityError, match="bad signature"):
        open_envelope(signers, forged, "catalog", "catalog", "p")
    assert len(blob) == ENVELOPE_HEADER + 4
