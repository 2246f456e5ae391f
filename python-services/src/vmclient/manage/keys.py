"""The device's keys on the laptop, behind a :class:`KeyStore` seam (a TPM later).

* Ed25519 signing key (its key id is the device id) and X25519 wrapping key,
  raw 32-byte files ``signing.key`` / ``wrapping.key``, mode 0600 in a 0700
  directory (the same files ``provision.keys.DeviceKeys`` reads).
* The admin's Ed25519 public key, pinned at enrolment in ``admin.pub``: every
  order is verified against it, never against a key the repository offers.
* :func:`shred` destroys a key file: overwrite with random bytes, fsync, unlink,
  fsync the directory, then check it is gone.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError, VMClientError
from ..store import crypto
from ..store.localfs import fsync_dir

SIGNING = "signing.key"
WRAPPING = "wrapping.key"
ADMIN_PUB = "admin.pub"
SSH_KEY = "ssh_ed25519"  # the SFTP login key (OpenSSH format), sent with the enrolment request


class KeyDestructionFailed(VMClientError):
    """Key file {} is still there after shredding: {}"""


class KeyStore(Protocol):
    """Where the device's private keys live.  Files now; TPM-sealed later."""

    def signing(self) -> crypto.Ed25519PrivateKey: ...

    def wrapping(self) -> crypto.X25519PrivateKey: ...

    def ensure(self) -> None:
        """Make whichever key is missing (enrolment)."""

    def new_identity(self) -> None:
        """Destroy the signing key (re-enrolment after a wipe: a new device id)."""


class FileKeyStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def ensure(self) -> None:
        for name, make in ((WRAPPING, crypto.X25519PrivateKey.generate),
                           (SIGNING, crypto.Ed25519PrivateKey.generate)):
            if not (self.dir / name).exists():
                write_private(self.dir / name, crypto.raw_private(make()), exclusive=True)

    def new_identity(self) -> None:
        shred(self.dir / SIGNING)

    def _read(self, name: str) -> bytes:
        path = self.dir / name
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                raise ConfigError(path, "", f"mode {st.st_mode & 0o777:o}: must be 0600")
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(path, "", "no device key: enrol this laptop first") from None
        if len(raw) != 32:
            raise ConfigError(path, "", "not a raw 32-byte private key")
        return raw

    def signing(self) -> crypto.Ed25519PrivateKey:
        return crypto.Ed25519PrivateKey.from_private_bytes(self._read(SIGNING))

    def wrapping(self) -> crypto.X25519PrivateKey:
        return crypto.X25519PrivateKey.from_private_bytes(self._read(WRAPPING))


def ssh_identity(directory: Path, *, renew: bool = False) -> tuple[Path, str]:
    """The device's SSH key for its SFTP account: (private key file, public key line).

    A key of its own, not the signing key: one key, one purpose.  ``renew``
    (re-enrolment) replaces it, so the new identity shares no credential with
    the old, revoked one.
    """
    path = directory / SSH_KEY
    if renew:
        shred(path)
    if not path.exists():
        key = crypto.Ed25519PrivateKey.generate()
        write_private(path, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), exclusive=True)
    raw = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    public = raw.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return path, f"{public} vmclient-device"


def device_id(keys: KeyStore) -> str:
    return crypto.key_id(keys.signing().public_key())


def pin_admin_key(directory: Path, raw: bytes) -> None:
    """Pin the admin key (enrolment); a different key already pinned is refused."""
    crypto.ed25519_public(raw)
    path = directory / ADMIN_PUB
    if path.exists() and path.read_bytes() != raw:
        raise VMClientError(f"another admin key is pinned in {path}: re-enrol to change it")
    write_private(path, raw)


def pinned_admin_key(directory: Path) -> crypto.Ed25519PublicKey:
    path = directory / ADMIN_PUB
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "no admin key pinned: enrol this laptop first") from None
    if len(raw) != 32:
        raise ConfigError(path, "", "not a raw Ed25519 public key")
    return crypto.ed25519_public(raw)


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write a root-only file atomically: 0600 in a 0700 directory, fsync'ed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def shred(path: Path) -> bool:
    """Overwrite, fsync, unlink, fsync the directory; True if there was a file.

    Crypto-shredding: the key is what makes the encrypted disks readable.  On
    a copy-on-write or flash file system the overwrite may not reach the old
    blocks; the unlink and a host disk encrypted underneath are what count
    there (threat-model.md §6).
    """
    if not overwrite(path, random=True):
        return False
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    if path.exists():
        raise KeyDestructionFailed(path, "unlink did not remove it")
    return True


def overwrite(path: Path, *, random: bool = False) -> bool:
    """Overwrite a file's bytes in place (zeros, or random bytes) and fsync; False if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        size, done = os.fstat(fd).st_size, 0
        zeros = bytes(1 << 20)
        while done < size:
            n = min(1 << 20, size - done)
            done += os.pwrite(fd, os.urandom(n) if random else zeros[:n], done)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
