"""Keys on the laptop: the device's private keys and each VM's wrapped data key.

* The device has an Ed25519 signing key and an X25519 wrapping key
  (repository-format.md §4), raw 32-byte files, mode 0600 in a 0700 directory
  owned by root, read at every use (:class:`DeviceKeys`: a wipe or a
  re-enrolment replaces them under running daemons).  A TPM-sealed variant
  comes later behind this interface.
* Every VM has a random 32-byte data key.  It is stored only *wrapped* for the
  device's X25519 key (``crypto.wrap_key``, object ``data-key``/``vm:<name>``),
  in ``<state>/keys/<vm>.wrapped`` (0600).  Its key set's LUKS value, in hex,
  is the passphrase of every disk of the VM.
* Removing a VM destroys the wrapped key first (overwrite, fsync, unlink):
  without it the disks are unreadable (crypto-shredding).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from pathlib import Path

from ..errors import ConfigError, VMClientError
from ..manage.keys import FileKeyStore, shred, write_private
from ..store import crypto
from ..store.errors import RemoteIntegrityError


class VMKeyError(VMClientError):
    """VM key {!r}: {}"""


class DeviceKeys:
    """The device's signing and wrapping keys, read from their files at every use.

    Never kept in memory between operations: a wipe replaces the wrapping key
    and a re-enrolment the signing key while provd and syncd keep running, and
    a daemon holding the old key would wrap a new VM's data key for a key that
    was shredded (the VM unreadable) or sign for a device id that is gone.
    Reading 32 bytes per operation costs nothing next to what an operation does.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._files = FileKeyStore(directory)

    def __repr__(self) -> str:
        return f"DeviceKeys({str(self.dir)!r})"

    @property
    def signing(self) -> crypto.Ed25519PrivateKey:
        return self._files.signing()

    @property
    def wrapping(self) -> crypto.X25519PrivateKey:
        return self._files.wrapping()

    @property
    def device_id(self) -> str:
        return crypto.key_id(self.signing.public_key())

    @property
    def wrapping_id(self) -> str:
        return crypto.key_id(self.wrapping.public_key())

    @classmethod
    def load_or_create(cls, directory: Path) -> DeviceKeys:
        """The device keys in ``directory``; made on first use (enrolment sends the publics)."""
        sign_path, wrap_path = directory / "signing.key", directory / "wrapping.key"
        # exclusive: provd, syncd and the agent share the directory; the first one to make
        # a key wins and the others read it (a replaced key would orphan what it wrapped)
        for path, make in ((sign_path, crypto.Ed25519PrivateKey.generate),
                           (wrap_path, crypto.X25519PrivateKey.generate)):
            if not path.exists():
                with contextlib.suppress(FileExistsError):
                    write_private(path, crypto.raw_private(make()), exclusive=True)
        keys = cls(directory)
        try:
            keys.signing, keys.wrapping  # noqa: B018  (readable now, or refuse to start)
        except (OSError, ValueError) as exc:
            raise VMKeyError("device", f"cannot read the device keys in {directory}: {exc}") \
                from exc
        return keys


def passphrase(keys: crypto.KeySet) -> bytes:
    """The LUKS passphrase of a VM's disks (UTF-8, as QEMU wants it)."""
    return keys.luks.hex().encode()


class VMKeys:
    """Each VM's data key, stored wrapped for the device key only."""

    def __init__(self, state_dir: Path, device: DeviceKeys) -> None:
        self.dir = state_dir / "keys"
        self.device = device

    def path(self, vm: str) -> Path:
        return self.dir / f"{vm}.wrapped"

    def exists(self, vm: str) -> bool:
        return self.path(vm).exists()

    def create(self, vm: str) -> crypto.KeySet:
        keys = crypto.KeySet.generate()
        blob = crypto.wrap_key(self.device.wrapping.public_key(), keys.secret, "data-key",
                               f"vm:{vm}")
        try:
            write_private(self.path(vm), blob, exclusive=True)
        except FileExistsError:
            raise VMKeyError(vm, "a data key exists already (remove the VM first)") from None
        return keys

    def adopt(self, vm: str, keys: crypto.KeySet) -> None:
        """Store an existing data key (a restored VM's), wrapped for this device."""
        blob = crypto.wrap_key(self.device.wrapping.public_key(), keys.secret, "data-key",
                               f"vm:{vm}")
        try:
            write_private(self.path(vm), blob, exclusive=True)
        except FileExistsError:
            raise VMKeyError(vm, "a data key exists already (remove the VM first)") from None

    def load(self, vm: str) -> crypto.KeySet:
        path = self.path(vm)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise VMKeyError(vm, f"no data key at {path}: the VM's disks cannot be opened") \
                from None
        try:
            secret = crypto.unwrap_key(self.device.wrapping, blob, "data-key", f"vm:{vm}",
                                       path=str(path))
        except RemoteIntegrityError as exc:
            raise VMKeyError(vm, f"{path} does not open with this device's key: "
                            f"{exc.problem}") from exc
        return crypto.KeySet.derive(secret)

    def destroy(self, vm: str) -> None:
        shred(self.path(vm))


def load_admin_key(path: Path) -> crypto.Ed25519PublicKey | None:
    """The pinned admin public key (32 raw bytes or their base64); None if absent."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the admin key: {exc.strerror}") from exc
    if len(raw) != 32:
        try:
            raw = base64.b64decode(raw.strip(), validate=True)
        except binascii.Error:
            raw = b""
    if len(raw) != 32:
        raise ConfigError(path, "", "not an Ed25519 public key (32 bytes, raw or base64)")
    return crypto.ed25519_public(raw)
