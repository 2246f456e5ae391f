"""Crypto primitives of the repository format, on bytes only (no I/O).

Everything here is a thin, documented composition of `cryptography`'s
AES-256-GCM, X25519, Ed25519 and HKDF and of `hashlib`/`hmac`: no home-made
primitives.  ``python-services/docs/repository-format.md`` ("Keys" and
"Sealed objects") is the specification; this module is its reference code.

* A *key set* is derived with HKDF-SHA-256 from one 32-byte secret (a VM's
  data key or an image's content key): the AEAD key, the chunk-id key, the key
  check and the LUKS passphrase of the local disks.
* ``seal``/``open_sealed``: AES-256-GCM, random 96-bit nonce, the object's type
  and id bound into the associated data, so a blob cannot be moved to another
  name or relabelled as another kind of object.
* ``wrap_key``/``unwrap_key``: ECIES-style: ephemeral X25519, HKDF, AES-GCM.
* ``sign``/``verify``: Ed25519 over a domain-separated message that also binds
  the object type and id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import LocalSyncError, RemoteIntegrityError, UnsupportedVersion

__all__ = [
    "Ed25519PrivateKey", "Ed25519PublicKey", "KeySet", "X25519PrivateKey", "X25519PublicKey",
    "chunk_id", "ed25519_public", "hkdf", "key_id", "open_sealed", "raw_private", "raw_public",
    "seal", "sha256_hex", "sign", "unwrap_key", "verify", "wrap_key", "x25519_public",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
ID_SIZE = 32
SEAL_MAGIC = b"VMCS"
SEAL_VERSION = 1
SEAL_HEADER = SEAL_MAGIC + bytes([SEAL_VERSION])
SEAL_OVERHEAD = len(SEAL_HEADER) + NONCE_SIZE + TAG_SIZE
WRAP_OVERHEAD = KEY_SIZE + SEAL_OVERHEAD
SIG_SIZE = 64
_DOMAIN = b"vmclient/v1/"


def _label(obj_type: str, obj_id: str) -> bytes:
    """``type NUL id``: the part of AAD and signed messages naming the object."""
    if not obj_type or "\0" in obj_type or "\0" in obj_id:
        raise LocalSyncError(f"invalid object label {obj_type!r} {obj_id!r}")
    return obj_type.encode() + b"\0" + obj_id.encode()


def hkdf(secret: bytes, purpose: str, *, salt: bytes | None = None,
         length: int = KEY_SIZE) -> bytes:
    """HKDF-SHA-256 of ``secret`` with info ``vmclient/v1/<purpose>``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt,
                info=_DOMAIN + purpose.encode()).derive(secret)


@dataclass(frozen=True, repr=False)
class KeySet:
    """The keys derived from one VM data key or image content key."""

    secret: bytes
    enc: bytes
    chunk_id: bytes
    check: str
    luks: bytes

    @classmethod
    def derive(cls, secret: bytes) -> KeySet:
        if len(secret) != KEY_SIZE:
            raise LocalSyncError(f"a data key has {KEY_SIZE} bytes, not {len(secret)}")
        return cls(secret=secret, enc=hkdf(secret, "aead"), chunk_id=hkdf(secret, "chunk-id"),
                   check=hkdf(secret, "key-check", length=16).hex(),
                   luks=hkdf(secret, "luks"))

    @classmethod
    def generate(cls) -> KeySet:
        return cls.derive(os.urandom(KEY_SIZE))

    def passphrase(self) -> bytes:
        """The LUKS passphrase of the disks of the VM this key set is for (the hex of
        ``luks``, UTF-8, as QEMU wants it)."""
        return self.luks.hex().encode()

    def __repr__(self) -> str:  # never print key material
        return f"KeySet(check={self.check})"


def chunk_id(id_key: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte id of a chunk: HMAC-SHA-256 of its plaintext under the id key."""
    return hmac.digest(id_key, plaintext, "sha256")


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


_local = threading.local()


def _aead(key: bytes) -> AESGCM:
    """The AES-GCM object of ``key``, one per thread and key (the sync seals tens of
    thousands of chunks under one key; building the object each time costs ~20 %)."""
    cache: dict[bytes, AESGCM] = _local.__dict__.setdefault("aead", {})
    aead = cache.get(key)
    if aead is None:
        if len(cache) >= 16:
            cache.clear()
        aead = cache[key] = AESGCM(key)
    return aead


def seal(key: bytes, obj_type: str, obj_id: str, plaintext: bytes | memoryview,
         *, nonce: bytes | None = None) -> bytes:
    """``VMCS 01 | nonce | AES-256-GCM(plaintext)`` with AAD = header | type NUL id.

    ``nonce`` is for known-answer tests only; leave it out everywhere else.
    """
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    aad = SEAL_HEADER + _label(obj_type, obj_id)
    return SEAL_HEADER + nonce + _aead(key).encrypt(nonce, bytes(plaintext), aad)


def open_sealed(key: bytes, obj_type: str, obj_id: str, untrusted_blob: bytes | memoryview,
                *, path: str = "") -> bytes:
    """Decrypt a sealed object, or raise :class:`RemoteIntegrityError` naming it.

    A memoryview (a blob inside a pack read) is opened in place, without a copy.
    """
    view = memoryview(untrusted_blob)
    if len(view) < SEAL_OVERHEAD:
        raise RemoteIntegrityError(obj_type, obj_id, path,
                                   f"sealed object truncated ({len(view)} bytes)")
    if view[:4] != SEAL_MAGIC:
        raise RemoteIntegrityError(obj_type, obj_id, path, "not a sealed object (bad magic)")
    if view[4] != SEAL_VERSION:
        raise UnsupportedVersion(obj_type, obj_id, path, f"sealed-object version {view[4]}")
    nonce = bytes(view[5:5 + NONCE_SIZE])
    aad = SEAL_HEADER + _label(obj_type, obj_id)
    try:
        return _aead(key).decrypt(nonce, view[5 + NONCE_SIZE:], aad)
    except InvalidTag:
        raise RemoteIntegrityError(
            obj_type, obj_id, path,
            "authentication failed (corrupted, swapped, relabelled or wrong key)") from None


def wrap_key(recipient: X25519PublicKey, secret: bytes, obj_type: str, obj_id: str,
             *, ephemeral: X25519PrivateKey | None = None, nonce: bytes | None = None) -> bytes:
    """Wrap ``secret`` for ``recipient``: ``ephemeral public (32) | sealed``.

    KEK = HKDF(X25519(e, R), salt = e_pub | R_pub, info "wrap").  ``ephemeral``
    and ``nonce`` are for known-answer tests only.
    """
    ephemeral = ephemeral or X25519PrivateKey.generate()
    e_pub = raw_public(ephemeral.public_key())
    kek = hkdf(ephemeral.exchange(recipient), "wrap", salt=e_pub + raw_public(recipient))
    return e_pub + seal(kek, obj_type, obj_id, secret, nonce=nonce)


def unwrap_key(recipient: X25519PrivateKey, untrusted_blob: bytes, obj_type: str, obj_id: str,
               *, path: str = "") -> bytes:
    if len(untrusted_blob) != WRAP_OVERHEAD + KEY_SIZE:
        raise RemoteIntegrityError(obj_type, obj_id, path,
                                   f"wrapped key has {len(untrusted_blob)} bytes")
    e_pub = untrusted_blob[:KEY_SIZE]
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(e_pub))
    except ValueError:  # low-order point: all-zero shared secret
        raise RemoteIntegrityError(obj_type, obj_id, path, "invalid ephemeral key") from None
    kek = hkdf(shared, "wrap", salt=e_pub + raw_public(recipient.public_key()))
    return open_sealed(kek, obj_type, obj_id, untrusted_blob[KEY_SIZE:], path=path)


def _signed_message(obj_type: str, obj_id: str, body: bytes) -> bytes:
    return _DOMAIN + b"sig\0" + _label(obj_type, obj_id) + b"\0" + body


def sign(key: Ed25519PrivateKey, obj_type: str, obj_id: str, body: bytes) -> bytes:
    return key.sign(_signed_message(obj_type, obj_id, body))


def verify(key: Ed25519PublicKey, untrusted_sig: bytes, obj_type: str, obj_id: str,
           untrusted_body: bytes, *, path: str = "") -> None:
    """Check an Ed25519 signature; raise :class:`RemoteIntegrityError` naming the object."""
    try:
        key.verify(untrusted_sig, _signed_message(obj_type, obj_id, untrusted_body))
    except InvalidSignature:
        raise RemoteIntegrityError(obj_type, obj_id, path,
                                   f"bad signature (expected signer {key_id(key)})") from None


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_private(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def key_id(key: Ed25519PublicKey | X25519PublicKey) -> str:
    """A public key's name: the first 16 bytes of SHA-256 of its raw form, in hex."""
    return hashlib.sha256(raw_public(key)).hexdigest()[:32]


def ed25519_public(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def x25519_public(raw: bytes) -> X25519PublicKey:
    return X25519PublicKey.from_public_bytes(raw)
