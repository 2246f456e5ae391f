"""The data partition's recovery key, escrowed to IT (repository-format.md §5 "Recovery
key", threat-model.md; meta-vmclient/PLAN-encryption.md §3).

The laptop's data partition is LUKS2 with its key sealed to the TPM2.  When the TPM2
refuses (a firmware update, changed Secure Boot keys, the disk in another laptop),
systemd-cryptsetup asks on the console for a recovery key.  Only IT holds it:

1. Once the laptop is enrolled, vmclient-syncd's agent writes the repository's escrow
   public key (from the admin-signed ``config``) to ``<state_dir>/escrow.pub``.
2. ``vmclientctl recovery-key`` (vmclient-recovery-key.service: root, with access to
   the disk and the TPM, started by a path unit when that file appears and at every
   boot) runs ``systemd-cryptenroll --recovery-key --wipe-slot=recovery`` through a
   pipe: a new keyslot, the older recovery keyslot gone.  It decodes the key to its
   32 bytes, wraps them for the escrow key (bound to type ``recovery-key`` and this
   device's id), signs the document with the device key and writes it to
   ``<device_dir>/recovery-key.pending``.  The key itself is never written, logged
   or put in the journal.
3. The agent uploads that object to ``devices/<id>/recovery-key`` and renames it
   ``recovery-key``: sent.
4. IT runs ``vmclient-admin recovery-key DEVICE`` with the offline escrow key.

Pure core: :func:`format_key`, :func:`parse_key`, :class:`RecoveryKey`.  Adapters:
:class:`Enroller` (systemd-cryptenroll), :func:`escrow`, :func:`upload_pending`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import VMClientError
from ..host.files import write_private
from ..host.keys import DeviceKeys
from ..store import crypto, layout
from ..store.format import Reader, b64, canonical_json, open_envelope, signed_envelope
from ..store.remote import RemoteStore, get_object
from ..tasks import at_most

log = logging.getLogger(__name__)

OBJ_TYPE = "recovery-key"
PENDING = "recovery-key.pending"  # written, not yet uploaded (in the device directory)
SENT = "recovery-key"  # uploaded
ESCROW_PUB = "escrow.pub"  # the repository's escrow public key, raw (in the state directory)
VOLUME = "/dev/disk/by-partlabel/vmdata"  # meta-vmclient's repart.d/crypttab
# systemd's recovery keys: 32 random bytes as 64 modhex characters in 8 groups of 8
MODHEX = "cbdefghijklnrtuv"
KEY_BYTES = 32
KEY_RE = re.compile(r"[cbdefghijklnrtuv]{8}(?:-[cbdefghijklnrtuv]{8}){7}")
_SLOT_RE = re.compile(r"enrolled as key slot (\d+)")
_VOLUME_RE = re.compile(r"^/[^\0\n]{0,255}$")


class RecoveryKeyError(VMClientError):
    """Recovery key: {}"""


def object_path(device: str) -> str:
    return f"{layout.device_dir(device)}/{OBJ_TYPE}"


def format_key(secret: bytes) -> str:
    """The text systemd-cryptenroll prints and the LUKS keyslot takes as its passphrase."""
    if len(secret) != KEY_BYTES:
        raise RecoveryKeyError(f"a recovery key has {KEY_BYTES} bytes, not {len(secret)}")
    chars = "".join(MODHEX[b >> 4] + MODHEX[b & 0xF] for b in secret)
    return "-".join(chars[i:i + 8] for i in range(0, len(chars), 8))


def parse_key(untrusted_text: str) -> bytes:
    """The 32 bytes of exactly one recovery key (one line, as systemd-cryptenroll writes
    it to standard output); anything else is refused, and never quoted back."""
    text = untrusted_text[:-1] if untrusted_text.endswith("\n") else untrusted_text
    if not KEY_RE.fullmatch(text):
        raise RecoveryKeyError("systemd-cryptenroll's output is not one recovery key "
                               f"({len(untrusted_text)} characters, not shown)")
    digits = text.replace("-", "")
    return bytes(MODHEX.index(digits[i]) << 4 | MODHEX.index(digits[i + 1])
                 for i in range(0, len(digits), 2))


@dataclass(frozen=True)
class RecoveryKey:
    """``devices/<d>/recovery-key``: the key wrapped for the escrow key (device-signed)."""

    device: str
    created: int
    volume: str  # the LUKS2 device it unlocks, as the laptop names it
    keyslot: int  # -1: systemd-cryptenroll did not say
    recipient: str  # the escrow key's id
    wrapped: bytes  # crypto.wrap_key(escrow, secret, "recovery-key", device)

    @classmethod
    def seal(cls, escrow: crypto.X25519PublicKey, secret: bytes, device: str, created: int,
             volume: str, keyslot: int) -> RecoveryKey:
        return cls(device, created, volume, keyslot, crypto.key_id(escrow),
                   crypto.wrap_key(escrow, secret, OBJ_TYPE, device))

    def unwrap(self, escrow: crypto.X25519PrivateKey, path: str) -> str:
        """The recovery key as a person types it."""
        if crypto.key_id(escrow.public_key()) != self.recipient:
            raise RecoveryKeyError(f"{path} is wrapped for escrow key {self.recipient}, "
                                   f"not {crypto.key_id(escrow.public_key())}")
        return format_key(crypto.unwrap_key(escrow, self.wrapped, OBJ_TYPE, self.device,
                                            path=path))

    def to_bytes(self) -> bytes:
        return canonical_json({"version": 1, "device": self.device, "created": self.created,
                               "volume": self.volume, "keyslot": self.keyslot,
                               "recipient": self.recipient, "wrapped": b64(self.wrapped)})

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> RecoveryKey:
        r = Reader.parse(untrusted_body, OBJ_TYPE, device, path)
        r.version({1})
        key = cls(r.const("device", device), r.integer("created", lo=0),
                  r.text("volume", pattern=_VOLUME_RE), r.integer("keyslot", lo=-1, hi=31),
                  r.text("recipient", pattern=re.compile(r"^[0-9a-f]{32}$")),
                  r.b64("wrapped", size=crypto.WRAP_OVERHEAD + KEY_BYTES))
        r.done()
        return key

    def envelope(self, signing: crypto.Ed25519PrivateKey) -> bytes:
        return signed_envelope(signing, OBJ_TYPE, self.device, self.to_bytes())

    @classmethod
    def open(cls, signer: crypto.Ed25519PublicKey, untrusted_blob: bytes, device: str,
             path: str) -> RecoveryKey:
        _s, body = open_envelope({crypto.key_id(signer): signer}, untrusted_blob, OBJ_TYPE,
                                 device, path)
        return cls.parse(body, device, path)


# --- adapters -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Enroller:
    """``systemd-cryptenroll --recovery-key`` on the data partition.

    ``unlock``: how systemd-cryptenroll opens the volume to add a keyslot: the TPM2
    keyslot on the laptop; none (it then uses ``$PASSWORD`` or asks) for a volume
    with a passphrase."""

    volume: str = VOLUME
    unlock: tuple[str, ...] = ("--unlock-tpm2-device=auto",)
    command: str = "systemd-cryptenroll"

    async def enrol(self) -> tuple[bytes, int]:
        """A new recovery keyslot (older recovery keyslots wiped): (key, keyslot)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
        # its messages to our pipe, never to the journal; no colours, no QR code
        env.update(SYSTEMD_LOG_TARGET="console", SYSTEMD_COLORS="0", LC_ALL="C")
        argv = [self.command, "--recovery-key", "--wipe-slot=recovery", *self.unlock,
                self.volume]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env)
            out, err = await at_most(proc.communicate(), 300)
        except FileNotFoundError:
            raise RecoveryKeyError(f"{self.command} is not installed") from None
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RecoveryKeyError(f"{self.command} on {self.volume}: no answer in 300 s"
                                   ) from None
        messages = KEY_RE.sub("(key not shown)", err.decode(errors="replace"))
        if proc.returncode != 0:
            last = [ln for ln in messages.splitlines() if ln.strip()][-1:] or ["no message"]
            raise RecoveryKeyError(f"{self.command} on {self.volume} failed "
                                   f"(exit {proc.returncode}): {last[0]}")
        secret = parse_key(out.decode(errors="replace"))
        slot = _SLOT_RE.search(messages)
        return secret, int(slot.group(1)) if slot else -1


def escrow_key(state_dir: Path) -> crypto.X25519PublicKey | None:
    try:
        raw = (state_dir / ESCROW_PUB).read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) != 32:
        raise RecoveryKeyError(f"{state_dir / ESCROW_PUB}: not a raw X25519 public key")
    return crypto.x25519_public(raw)


def note_escrow_key(state_dir: Path, escrow: crypto.X25519PublicKey) -> bool:
    """Record the repository's escrow key (the agent, from the verified config);
    True when it changed."""
    raw = crypto.raw_public(escrow)
    current = escrow_key(state_dir)
    if current is not None and crypto.raw_public(current) == raw:
        return False
    write_private(state_dir / ESCROW_PUB, raw)
    return True


def _current(device_dir: Path, signing: crypto.Ed25519PrivateKey) -> RecoveryKey | None:
    """The newest recovery key document of this device (pending, else sent)."""
    device = crypto.key_id(signing.public_key())
    for name in (PENDING, SENT):
        try:
            blob = (device_dir / name).read_bytes()
        except FileNotFoundError:
            continue
        try:
            return RecoveryKey.open(signing.public_key(), blob, device, str(device_dir / name))
        except VMClientError:  # another identity's (re-enrolled), or damaged: make a new one
            return None
    return None


async def escrow(state_dir: Path, device_dir: Path, enroller: Enroller, now: int) -> str:
    """Make and wrap a recovery key unless this device has one for this escrow key;
    what was done, for the log."""
    escrow_pub = escrow_key(state_dir)
    if escrow_pub is None:
        return "not enrolled yet: no escrow key"
    keys = DeviceKeys(device_dir)
    signing = keys.signing()
    device = crypto.key_id(signing.public_key())
    have = _current(device_dir, signing)
    if have is not None and have.recipient == crypto.key_id(escrow_pub):
        return f"up to date (key slot {have.keyslot}, created {have.created})"
    secret, slot = await enroller.enrol()
    doc = RecoveryKey.seal(escrow_pub, secret, device, now, enroller.volume, slot)
    del secret
    write_private(device_dir / PENDING, doc.envelope(signing))
    return f"new recovery key in key slot {slot}, wrapped for escrow key {doc.recipient}"


async def fetch(remote: RemoteStore, device: str, signer: crypto.Ed25519PublicKey
                ) -> RecoveryKey:
    """``devices/<device>/recovery-key``, checked against the device's signing key
    (from its admin-signed record): what IT unwraps."""
    path = object_path(device)
    untrusted = await get_object(remote, path, OBJ_TYPE, device)
    return RecoveryKey.open(signer, untrusted, device, path)


async def upload_pending(remote: RemoteStore, device_dir: Path,
                         signing: crypto.Ed25519PublicKey) -> bool:
    """Upload the pending recovery key signed by this device's ``signing`` key; True when
    one was sent.  One of another identity (before a re-enrolment) stays: the next
    ``vmclientctl recovery-key`` replaces it."""
    pending = device_dir / PENDING
    try:
        blob = pending.read_bytes()
    except FileNotFoundError:
        return False
    device = crypto.key_id(signing)
    try:
        RecoveryKey.open(signing, blob, device, str(pending))  # ours, whole
    except VMClientError:
        return False
    await remote.put_atomic(object_path(device), blob, exclusive=False)
    os.replace(pending, device_dir / SENT)
    log.info("recovery key of the data partition escrowed to %s", object_path(device))
    return True
