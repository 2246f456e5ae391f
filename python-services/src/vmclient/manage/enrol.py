"""Enrolment with a one-time code.

1. IT issues a code (:meth:`CodeBook.issue`, kept on the admin's offline
   machine) and gives it to the user out of band.
2. The laptop makes its keys, pins the admin key and writes an **enrolment
   request** ``enrolment/<device id>``: its public keys and name, self-signed
   with the new signing key (proof of possession), and ``proof`` =
   HMAC-SHA-256 under a key derived from the code.  The code itself never
   reaches the (untrusted) server.
3. :func:`process_requests` (admin) checks each request against the unused
   codes: a wrong code, a used code, an expired code or two requests with the
   same code are refused and the request removed; a match burns the code
   (recorded first) and then the admin signs ``devices/<id>/device``.  A
   refusal is told to the laptop: an admin-signed ``enrolment-refused/<digest
   of the id>`` (:class:`Refusal`), which names the request it answers.
4. The laptop sees its admin-signed device record (:func:`complete`) and
   starts with a fresh lease; or IT's refusal of the request it sent
   (:func:`fetch_refusal`), and the person types the code again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from ..errors import VMClientError
from ..host.files import write_private
from ..store import crypto, layout
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.format import (
    DEVICE_NAME_RE,
    ENVELOPE_HEADER,
    Reader,
    b64,
    canonical_json,
    open_envelope,
)
from ..store.orders import DEVICE_ID_RE, DeviceRecord, check_device_name
from ..store.remote import RemoteStore, get_object
from ..store.repo import get_signed, put_signed

REQUESTS = "enrolment"
REFUSALS = "enrolment-refused"
REASON_RE = re.compile(r"^[\x20-\x7e]{1,200}$")  # IT's words, as the laptop shows them
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 16  # 80 bits
CODE_TTL = 7 * 86400
# one OpenSSH public key line, no options, no newline (it goes into authorized_keys)
SSH_KEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,3}"
                        r"( [A-Za-z0-9@._:+-]{1,64})?$")


class EnrolmentRefused(VMClientError):
    """Enrolment of {} refused: {}"""


def request_path(device: str) -> str:
    return f"{REQUESTS}/{device}"


def refusal_path(device: str) -> str:
    """Where IT's refusal of the device's request waits for the laptop: a directory every
    account reads (the drop box's too: a laptop not enrolled has no account of its
    own), each file named by a digest of the device id (its listing shows no ids)."""
    return f"{REFUSALS}/{hashlib.sha256(device.encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class Refusal:
    """IT's refusal of one enrolment request (admin-signed): the request's device and
    ``requested`` time name the request, so a refusal of an earlier one is not taken
    for the answer to the next."""

    device: str
    requested: int
    reason: str

    def to_bytes(self) -> bytes:
        return canonical_json({"version": 1, "device": self.device,
                               "requested": self.requested, "reason": self.reason})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> Refusal:
        r = Reader.parse(untrusted_body, "enrolment-refusal", device, path)
        r.version({1})
        refusal = cls(r.const("device", device), r.integer("requested", lo=0),
                      r.text("reason", pattern=REASON_RE))
        r.done()
        return refusal


def normalise(code: str) -> str:
    return code.replace("-", "").replace(" ", "").upper()


def _code_key(code: str) -> bytes:
    return crypto.hkdf(normalise(code).encode(), "enrol-code")


@dataclass(frozen=True)
class EnrolmentRequest:
    device: str
    name: str
    signing_key: bytes
    wrapping_key: bytes
    requested: int
    proof: bytes = b""
    ssh_key: str = ""  # version 2: the OpenSSH public key its SFTP account will accept

    def _fields(self) -> dict[str, object]:
        fields: dict[str, object] = {
            "version": 2 if self.ssh_key else 1, "device": self.device, "name": self.name,
            "signing_key": b64(self.signing_key), "wrapping_key": b64(self.wrapping_key),
            "requested": self.requested}
        if self.ssh_key:
            fields["ssh_key"] = self.ssh_key
        return fields

    def with_proof(self, code: str) -> EnrolmentRequest:
        mac = hmac.digest(_code_key(code), canonical_json(self._fields()), "sha256")
        return EnrolmentRequest(**{**vars(self), "proof": mac})

    def proves(self, code_key: bytes) -> bool:
        mac = hmac.digest(code_key, canonical_json(self._fields()), "sha256")
        return hmac.compare_digest(mac, self.proof)

    def to_bytes(self) -> bytes:
        return canonical_json({**self._fields(), "proof": b64(self.proof)})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> EnrolmentRequest:
        r = Reader.parse(untrusted_body, "enrolment", device, path)
        version = r.version({1, 2})
        req = cls(r.const("device", device), r.text("name", pattern=DEVICE_NAME_RE),
                  r.b64("signing_key", size=32),
                  r.b64("wrapping_key", size=32), r.integer("requested", lo=0),
                  r.b64("proof", size=32),
                  r.text("ssh_key", pattern=SSH_KEY_RE) if version == 2 else "")
        r.done()
        if crypto.key_id(crypto.ed25519_public(req.signing_key)) != device:
            r.fail("signing_key", "is not the key the device id names")
        crypto.x25519_public(req.wrapping_key)
        return req


# --- the laptop --------------------------------------------------------------------------------

async def send_request(remote: RemoteStore, signing: crypto.Ed25519PrivateKey,
                       wrapping: crypto.X25519PrivateKey, name: str, code: str,
                       now: int, ssh_key: str = "") -> str:
    check_device_name(name)
    device = crypto.key_id(signing.public_key())
    req = EnrolmentRequest(device, name, crypto.raw_public(signing.public_key()),
                           crypto.raw_public(wrapping.public_key()), now,
                           ssh_key=ssh_key).with_proof(code)
    await put_signed(remote, request_path(device), signing, ("enrolment", device),
                     req.to_bytes(), exclusive=False)
    return device


async def _admin_signed(remote: RemoteStore, admin: crypto.Ed25519PublicKey, path: str,
                        kind: str, device: str) -> bytes | None:
    """The body of the admin-signed ``kind`` object for ``device`` at ``path``; None if
    there is none (yet)."""
    try:
        _s, body, _raw = await get_signed(remote, path, {crypto.key_id(admin): admin}, kind,
                                          device)
    except ObjectNotFound:
        return None
    return body


async def fetch_record(remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: str,
                       signing: crypto.Ed25519PrivateKey,
                       wrapping: crypto.X25519PrivateKey) -> DeviceRecord | None:
    """Our admin-signed device record, or None while the request is pending."""
    path = layout.device_record(device)
    body = await _admin_signed(remote, admin, path, "device", device)
    if body is None:
        return None
    rec = DeviceRecord.parse(body, device, path)
    if (rec.signing_key != crypto.raw_public(signing.public_key())
            or rec.wrapping_key != crypto.raw_public(wrapping.public_key())):
        raise RemoteIntegrityError("device", device, path, "names other keys than this laptop's")
    return rec


async def fetch_refusal(remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: str,
                        requested: int) -> str | None:
    """IT's reason for refusing our request sent at ``requested``; None if there is no
    refusal of that request (pending, accepted, or a refusal of an earlier one)."""
    path = refusal_path(device)
    body = await _admin_signed(remote, admin, path, "enrolment-refusal", device)
    if body is None:
        return None
    refusal = Refusal.parse(body, device, path)
    return refusal.reason if refusal.requested == requested else None


# --- the admin ---------------------------------------------------------------------------------

class CodeBook:
    """One-time codes on the admin's machine (``enrolment-codes.json``, 0600)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> list[dict[str, object]]:
        try:
            return list(json.loads(self.path.read_text())["codes"])
        except FileNotFoundError:
            return []

    def _save(self, codes: list[dict[str, object]]) -> None:
        write_private(self.path, json.dumps({"codes": codes}, indent=1).encode())

    def issue(self, name: str, now: int, ttl: int = CODE_TTL) -> str:
        check_device_name(name)
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        codes = self._load()
        codes.append({"key": _code_key(code).hex(), "name": name, "issued": now,
                      "expires": now + ttl, "used_by": ""})
        self._save(codes)
        return "-".join(code[i:i + 4] for i in range(0, CODE_LENGTH, 4))

    def match(self, req: EnrolmentRequest) -> list[dict[str, object]]:
        return [c for c in self._load() if req.proves(bytes.fromhex(str(c["key"])))]

    def burn(self, key: str, device: str) -> None:
        codes = self._load()
        for c in codes:
            if c["key"] == key:
                c["used_by"] = device
        self._save(codes)


@dataclass(frozen=True)
class Outcome:
    device: str
    name: str
    enrolled: bool
    detail: str
    ssh_key: str = ""  # the SSH key the device asked its account to accept


async def read_request(remote: RemoteStore, path: str, device: str) -> EnrolmentRequest:
    untrusted = await get_object(remote, path, "enrolment", device)
    req = EnrolmentRequest.parse(untrusted[ENVELOPE_HEADER:], device, path)
    open_envelope({device: crypto.ed25519_public(req.signing_key)}, untrusted, "enrolment",
                  device, path)
    return req


async def process_requests(remote: RemoteStore, admin: crypto.Ed25519PrivateKey,
                           book: CodeBook, now: int) -> list[Outcome]:
    """Enrol every request with a valid unused code; refuse (and remove) the others."""
    pending: list[tuple[str, EnrolmentRequest | None, str]] = []
    for entry in await remote.list(REQUESTS):
        untrusted_device = entry.path.rsplit("/", 1)[-1]
        if not DEVICE_ID_RE.fullmatch(untrusted_device):
            pending.append((entry.path, None, "not a device id"))
            continue
        try:
            pending.append((entry.path, await read_request(remote, entry.path,
                                                           untrusted_device), ""))
        except RemoteIntegrityError as exc:
            pending.append((entry.path, None, exc.problem))
    claims: dict[str, int] = {}
    for _p, req, _e in pending:
        for c in book.match(req) if req else []:
            claims[str(c["key"])] = claims.get(str(c["key"]), 0) + 1
    out = []
    for path, req, error in pending:
        if req is None:
            out.append(Outcome(path, "?", False, f"malformed request: {error}"))
        else:
            outcome = await _decide(remote, admin, book, req, claims, now)
            await _answer(remote, admin, req, outcome)
            out.append(outcome)
        await remote.delete(path)
    return out


async def _answer(remote: RemoteStore, admin: crypto.Ed25519PrivateKey, req: EnrolmentRequest,
                  outcome: Outcome) -> None:
    """A refusal for the laptop to read (its words: the outcome's); an enrolment removes
    a refusal of an earlier request of the same device."""
    path = refusal_path(req.device)
    if outcome.enrolled:
        await remote.delete(path)  # (absent: nothing to do)
        return
    await put_signed(remote, path, admin, ("enrolment-refusal", req.device),
                     Refusal(req.device, req.requested, outcome.detail[:200]).to_bytes(),
                     exclusive=False)


async def _decide(remote: RemoteStore, admin: crypto.Ed25519PrivateKey, book: CodeBook,
                  req: EnrolmentRequest, claims: dict[str, int], now: int) -> Outcome:
    def refuse(why: str) -> Outcome:
        return Outcome(req.device, req.name, False, why)

    matches = book.match(req)
    if not matches:
        return refuse("wrong enrolment code")
    code = matches[0]
    key = str(code["key"])
    if claims.get(key, 0) > 1:
        book.burn(key, "(several requests: refused)")
        return refuse("several requests carry the same code: all refused, code burnt")
    if code["used_by"]:
        return refuse(f"enrolment code already used (by {code['used_by']})")
    if int(str(code["expires"])) < now:
        return refuse("enrolment code expired")
    book.burn(key, req.device)  # before the record: a crash must not leave the code usable
    rec = DeviceRecord(req.device, req.name, req.signing_key, req.wrapping_key, now)
    await put_signed(remote, layout.device_record(req.device), admin, ("device", req.device),
                     rec.to_bytes(), exclusive=False)
    return Outcome(req.device, req.name, True, f"enrolled as {code['name']}", req.ssh_key)
