"""The device key store: the laptop's private keys, each VM's wrapped data key, the admin anchor.

* The device has an Ed25519 signing key (its key id is the device id) and an
  X25519 wrapping key (repository-format.md §4): raw 32-byte files
  ``signing.key`` / ``wrapping.key``, mode 0600 in a 0700 directory owned by
  root, read at every use (:class:`DeviceKeys`: a wipe or a re-enrolment
  replaces them under running daemons).  A TPM-sealed variant comes later
  behind the same methods.
* Every VM has a random 32-byte data key.  It is stored only *wrapped* for the
  device's X25519 key (``crypto.wrap_key``, object ``data-key``/``vm:<name>``),
  in ``<keys dir>/<vm>.wrapped`` (0600, :class:`VMKeys`).  Its key set's LUKS
  value, in hex, is the passphrase of every disk of the VM
  (:meth:`~vmclient.store.crypto.KeySet.passphrase`).
* Every private file is read through :func:`read_private`, which refuses one
  that group or others may read (mode 0600 or stricter).
* The admin's Ed25519 public key (the anchor every catalog and order is
  verified against): the image's ``/etc/vmclient/admin-key.pub`` and the copy
  pinned at enrolment (``<manage>/admin.pub``) are one format, read by
  :func:`read_admin_key`: a PEM public key (what the image ships and
  :func:`pin_admin_key` writes), or its 32 raw bytes, or their base64.
* Removing a VM destroys the wrapped key first (:func:`~.files.shred`):
  without it the disks are unreadable (crypto-shredding).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError, VMClientError
from ..store import crypto
from ..store.errors import RemoteIntegrityError
from ..store.format import NAME_RE
from .files import shred, write_private
from .inventory import BadVMName

SIGNING = "signing.key"
WRAPPING = "wrapping.key"
ADMIN_PUB = "admin.pub"
SSH_KEY = "ssh_ed25519"  # the SFTP login key (OpenSSH format), sent with the enrolment request


class VMKeyError(VMClientError):
    """VM key {!r}: {}"""

    @property
    def reason(self) -> str:
        return str(self.args[1])


def read_private(path: Path, *, missing: str) -> bytes:
    """A root-only file's bytes; ConfigError if group or others may read it, or ``missing``."""
    try:
        st = path.stat()
        if st.st_mode & 0o077:
            raise ConfigError(path, "", f"mode {st.st_mode & 0o777:o}: must be 0600")
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", missing) from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read it: {exc.strerror}") from exc


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

    def __repr__(self) -> str:
        return f"DeviceKeys({str(self.dir)!r})"

    def _raw(self, name: str) -> bytes:
        path = self.dir / name
        raw = read_private(path, missing="no device key: enrol this laptop first")
        if len(raw) != 32:
            raise ConfigError(path, "", "not a raw 32-byte private key")
        return raw

    def signing(self) -> crypto.Ed25519PrivateKey:
        return crypto.Ed25519PrivateKey.from_private_bytes(self._raw(SIGNING))

    def wrapping(self) -> crypto.X25519PrivateKey:
        return crypto.X25519PrivateKey.from_private_bytes(self._raw(WRAPPING))

    def device_id(self) -> str:
        return crypto.key_id(self.signing().public_key())

    def wrapping_id(self) -> str:
        return crypto.key_id(self.wrapping().public_key())

    def ensure(self) -> None:
        """Make whichever key is missing.  Exclusive: provd, syncd and the agent share the
        directory; the first one to make a key wins and the others read it (a replaced
        key would orphan what it wrapped)."""
        for name, make in ((WRAPPING, crypto.X25519PrivateKey.generate),
                           (SIGNING, crypto.Ed25519PrivateKey.generate)):
            if not (self.dir / name).exists():
                with contextlib.suppress(FileExistsError):
                    write_private(self.dir / name, crypto.raw_private(make()), exclusive=True)

    def new_identity(self) -> None:
        """Destroy the signing key (re-enrolment after a wipe: a new device id)."""
        shred(self.dir / SIGNING)

    @classmethod
    def load_or_create(cls, directory: Path) -> DeviceKeys:
        """The device keys in ``directory``; made on first use (enrolment sends the publics)."""
        keys = cls(directory)
        keys.ensure()
        try:
            keys.signing(), keys.wrapping()  # readable now, or refuse to start
        except (OSError, ValueError) as exc:
            raise VMKeyError("device", f"cannot read the device keys in {directory}: {exc}") \
                from exc
        return keys


def unwrap_vm_key(path: Path, device: DeviceKeys, vm: str) -> crypto.KeySet:
    """The key set of ``vm`` from its wrapped data key at ``path`` (0600 checked), opened
    with the device's wrapping key (read now; its own errors are not VMKeyError)."""
    missing = f"no data key at {path}: the VM's disks cannot be opened"
    try:
        blob = read_private(path, missing=missing)
    except ConfigError as exc:
        raise VMKeyError(vm, missing if exc.problem == missing else f"{path}: {exc.problem}"
                         ) from None
    wrapping = device.wrapping()
    try:
        secret = crypto.unwrap_key(wrapping, blob, "data-key", f"vm:{vm}", path=str(path))
    except RemoteIntegrityError as exc:
        raise VMKeyError(vm, f"{path} does not open with this device's key: "
                             f"{exc.problem}") from exc
    return crypto.KeySet.derive(secret)


class VMKeys:
    """Each VM's data key, stored wrapped for the device key only, in ``<state_dir>/keys``."""

    def __init__(self, state_dir: Path, device: DeviceKeys) -> None:
        self.dir = state_dir / "keys"
        self.device = device

    def path(self, vm: str) -> Path:
        if not NAME_RE.fullmatch(vm):  # a name, never a path (names from callers)
            raise BadVMName(vm, NAME_RE.pattern)
        return self.dir / f"{vm}.wrapped"

    def exists(self, vm: str) -> bool:
        return self.path(vm).exists()

    def create(self, vm: str) -> crypto.KeySet:
        keys = crypto.KeySet.generate()
        self.adopt(vm, keys)
        return keys

    def adopt(self, vm: str, keys: crypto.KeySet) -> None:
        """Store a data key (a new one, or a restored VM's), wrapped for this device."""
        blob = crypto.wrap_key(self.device.wrapping().public_key(), keys.secret, "data-key",
                               f"vm:{vm}")
        try:
            write_private(self.path(vm), blob, exclusive=True)
        except FileExistsError:
            raise VMKeyError(vm, "a data key exists already (remove the VM first)") from None

    def load(self, vm: str) -> crypto.KeySet:
        return unwrap_vm_key(self.path(vm), self.device, vm)

    def destroy(self, vm: str) -> None:
        shred(self.path(vm))


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
    raw = serialization.load_ssh_private_key(read_private(path, missing="no SSH key"),
                                             password=None)
    public = raw.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return path, f"{public} vmclient-device"


def admin_key_pem(raw: bytes) -> bytes:
    """The admin anchor's file format: a PEM public key (SubjectPublicKeyInfo)."""
    return crypto.ed25519_public(raw).public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def pin_admin_key(directory: Path, raw: bytes) -> None:
    """Pin the admin key (enrolment); a different key already pinned is refused."""
    path = directory / ADMIN_PUB
    pinned = read_admin_key(path)
    if pinned is not None and crypto.raw_public(pinned) != raw:
        raise VMClientError(f"another admin key is pinned in {path}: re-enrol to change it")
    if pinned is None:
        write_private(path, admin_key_pem(raw))


def read_admin_key(path: Path) -> crypto.Ed25519PublicKey | None:
    """The admin anchor at ``path``; None if there is none.

    A PEM public key (``-----BEGIN PUBLIC KEY-----``, as ``openssl pkey -pubout``
    writes it and the image ships it), or its 32 raw bytes, or their base64.
    """
    try:
        untrusted = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the admin key: {exc.strerror}") from exc
    if untrusted.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(untrusted)
        except ValueError:
            key = None
        if not isinstance(key, crypto.Ed25519PublicKey):
            raise ConfigError(path, "", "not an Ed25519 public key in PEM form")
        return key
    raw = untrusted
    if len(raw) != 32:
        try:
            raw = base64.b64decode(untrusted.strip(), validate=True)
        except binascii.Error:
            raw = b""
    if len(raw) != 32:
        raise ConfigError(path, "", "not an Ed25519 public key (PEM, or 32 bytes raw or "
                                    "base64)")
    return crypto.ed25519_public(raw)


def pinned_admin_key(directory: Path) -> crypto.Ed25519PublicKey:
    """The admin key pinned at enrolment; ConfigError before that."""
    path = directory / ADMIN_PUB
    key = read_admin_key(path)
    if key is None:
        raise ConfigError(path, "", "no admin key pinned: enrol this laptop first")
    return key
