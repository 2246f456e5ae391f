"""The recovery key's pure core: systemd's modhex text, the escrow-wrapped document, its
signature and strict parsing (vmclient.manage.recovery)."""

from __future__ import annotations

import base64
import json

import pytest

from vmclient.manage.recovery import (
    KEY_RE,
    OBJ_TYPE,
    RecoveryKey,
    RecoveryKeyError,
    format_key,
    object_path,
    parse_key,
)
from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError, UnsupportedVersion

# systemd-cryptenroll's own example (its documentation and users' transcripts)
SAMPLE = "vbcrnbjn-vkrkihte-rctbufne-nlihihjl-tegudteu-rkjthcgd-hvhuvgik-rugeregh"
T = 1_764_000_000


def modhex(secret: bytes) -> str:
    """Yubico's modhex, spelt differently: hex digits mapped one to one, dashes every 8."""
    text = secret.hex().translate(str.maketrans("0123456789abcdef", "cbdefghijklnrtuv"))
    return "-".join(text[i:i + 8] for i in range(0, 64, 8))


def test_recovery_key_text_is_systemds_modhex_of_32_bytes() -> None:
    secret = bytes(range(32))
    assert format_key(secret) == modhex(secret)
    assert format_key(secret).startswith("cccbcdce-cfcgchci-")
    assert parse_key(format_key(secret) + "\n") == secret
    raw = parse_key(SAMPLE)
    assert len(raw) == 32 and format_key(raw) == SAMPLE
    with pytest.raises(RecoveryKeyError, match="32 bytes"):
        format_key(b"\0" * 31)


@pytest.mark.parametrize("bad", [
    "", "\n", SAMPLE.upper(), SAMPLE[1:], SAMPLE + "-cccccccc", SAMPLE.replace("-", ""),
    SAMPLE.replace("v", "a"), f"{SAMPLE}\n{SAMPLE}\n", f"key: {SAMPLE}", f" {SAMPLE}",
    f"{SAMPLE}\n\n", "A secret recovery key has been generated for this volume:",
])
def test_anything_but_exactly_one_key_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(RecoveryKeyError) as exc:
        parse_key(bad)
    assert not KEY_RE.search(str(exc.value)), "the error must not carry key material"


def _doc(escrow: crypto.X25519PrivateKey, device: str) -> tuple[RecoveryKey, bytes]:
    secret = parse_key(SAMPLE)
    return RecoveryKey.seal(escrow.public_key(), secret, device, T, "/dev/disk/by-partlabel/vmdata",
                            1), secret


def test_the_key_opens_only_with_the_escrow_key_it_was_wrapped_for() -> None:
    escrow, other = crypto.X25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    device = "ab" * 16
    doc, secret = _doc(escrow, device)
    assert secret not in doc.to_bytes() and SAMPLE.encode() not in doc.to_bytes()
    assert doc.recipient == crypto.key_id(escrow.public_key())
    assert doc.unwrap(escrow, object_path(device)) == SAMPLE
    with pytest.raises(RecoveryKeyError, match="wrapped for escrow key"):
        doc.unwrap(other, object_path(device))


def test_a_wrapped_key_moved_to_another_device_does_not_open() -> None:
    # The AEAD binds type and device id: the server cannot hand IT laptop A's key as B's.
    escrow = crypto.X25519PrivateKey.generate()
    doc, _secret = _doc(escrow, "ab" * 16)
    moved = RecoveryKey("cd" * 16, doc.created, doc.volume, doc.keyslot, doc.recipient,
                        doc.wrapped)
    with pytest.raises(RemoteIntegrityError, match="authentication failed"):
        moved.unwrap(escrow, object_path("cd" * 16))
    # and a data key's wrapping is not a recovery key's
    relabelled = crypto.wrap_key(escrow.public_key(), parse_key(SAMPLE), "data-key", "ab" * 16)
    with pytest.raises(RemoteIntegrityError):
        RecoveryKey("ab" * 16, T, doc.volume, 1, doc.recipient, relabelled).unwrap(escrow, "x")


def test_the_document_is_device_signed_and_strictly_parsed() -> None:
    escrow = crypto.X25519PrivateKey.generate()
    signing, thief = crypto.Ed25519PrivateKey.generate(), crypto.Ed25519PrivateKey.generate()
    device = crypto.key_id(signing.public_key())
    doc, _secret = _doc(escrow, device)
    path = object_path(device)
    assert path == f"devices/{device}/{OBJ_TYPE}"
    blob = doc.envelope(signing)
    assert RecoveryKey.open(signing.public_key(), blob, device, path) == doc
    with pytest.raises(RemoteIntegrityError):  # the server's own key, not the device's
        RecoveryKey.open(signing.public_key(), doc.envelope(thief), device, path)
    with pytest.raises(RemoteIntegrityError):  # stored under another device's name
        RecoveryKey.open(signing.public_key(), blob, "cd" * 16, path)
    for flipped in range(len(blob) - 40, len(blob), 7):
        bad = bytearray(blob)
        bad[flipped] ^= 1
        with pytest.raises(RemoteIntegrityError):
            RecoveryKey.open(signing.public_key(), bytes(bad), device, path)

    fields = json.loads(doc.to_bytes())
    for change, error in (({"version": 2}, UnsupportedVersion), ({"extra": 1}, RemoteIntegrityError),
                          ({"device": "cd" * 16}, RemoteIntegrityError),
                          ({"keyslot": 32}, RemoteIntegrityError),
                          ({"volume": "vmdata"}, RemoteIntegrityError),
                          ({"wrapped": base64.b64encode(b"x" * 96).decode()}, RemoteIntegrityError)):
        body = json.dumps({**fields, **change}).encode()
        with pytest.raises(error):
            RecoveryKey.parse(body, device, path)
