"""The admin's key directory: the Ed25519 signing key, the X25519 escrow key, catalog state.

Kept offline, with the admin, never inside the repository: ``init`` refuses a
key directory inside a local repository.  Private keys are PKCS#8 PEM files,
0600, in a 0700 directory, encrypted under the admin's passphrase (as restic and
borg protect theirs): the passphrase is stretched with scrypt (:class:`KDF`,
parameters and salt on a ``vmclient-admin-key:`` line before the PEM block, so
each file carries what it needs; OpenSSL skips that line), and the result is the
password of a standard encrypted PKCS#8 PEM (PBES2, AES-256-CBC), written by
``cryptography``'s serialization.  Plain (unencrypted) keys still load, with a
warning; ``vmclient-admin protect-keys`` encrypts them.

The signing key may instead be on a PKCS#11 token: an ``admin.pkcs11`` file in
place of ``admin.pem`` names it (:mod:`.token`); the escrow key stays a file.

``serials.json`` remembers the highest catalog serial this admin has signed per
repository, so a server that serves an old catalog cannot make the admin re-issue
a serial (the laptops would see two catalogs with one serial and refuse them).
``orders.json`` does the same for each device's order numbers
(:class:`vmclient.manage.admin.OrderNumbers`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import ConfigError, UsageError
from ..host.files import write_private
from ..manage.admin import OrderNumbers
from . import token

ADMIN_KEY = "admin.pem"
ESCROW_KEY = "escrow.pem"
SERIALS = "serials.json"
ORDERS = "orders.json"
ENV_PASSPHRASE = "VMCLIENT_ADMIN_PASSPHRASE"
HEADER = b"vmclient-admin-key:"
ENCRYPTED = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
_HEADER_RE = re.compile(rb"^vmclient-admin-key: scrypt n=([0-9]{1,8}) r=([0-9]{1,3}) "
                        rb"p=([0-9]{1,3}) salt=([A-Za-z0-9+/=]{16,64})$")
Passphrase = Callable[[], bytes]  # asked only when an encrypted key is met
K = TypeVar("K", Ed25519PrivateKey, X25519PrivateKey)


@dataclass(frozen=True)
class KDF:
    """scrypt over the passphrase: ~0.2 s and 32 MiB per derivation (n=2**15, r=8)."""

    salt: bytes
    n: int = 1 << 15
    r: int = 8
    p: int = 1

    def header(self) -> bytes:
        return (f"vmclient-admin-key: scrypt n={self.n} r={self.r} p={self.p} salt="
                f"{base64.b64encode(self.salt).decode()}\n").encode()

    @classmethod
    def parse(cls, first_line: bytes, path: Path) -> KDF:
        m = _HEADER_RE.fullmatch(first_line.strip())
        if not m:
            raise ConfigError(path, "", "an encrypted key without its vmclient-admin-key: line "
                              "(scrypt parameters): restore the file from its backup")
        n, r, p = int(m[1]), int(m[2]), int(m[3])
        if n not in {1 << i for i in range(14, 21)} or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ConfigError(path, "", f"scrypt parameters out of range: n={n} r={r} p={p}")
        try:
            salt = base64.b64decode(m[4], validate=True)
        except binascii.Error as exc:
            raise ConfigError(path, "", f"bad salt: {exc}") from exc
        return cls(salt, n, r, p)

    def derive(self, passphrase: bytes) -> bytes:
        """The PEM password; derived once per process (a command loads both keys, which
        share one salt; tests run many commands in one process)."""
        known = _DERIVED.get((self, passphrase))
        if known is None:
            raw = Scrypt(salt=self.salt, length=32, n=self.n, r=self.r,
                         p=self.p).derive(passphrase)
            known = _DERIVED[(self, passphrase)] = base64.b64encode(raw)  # printable
        return known


_DERIVED: dict[tuple[KDF, bytes], bytes] = {}


def env_passphrase() -> bytes:
    """The passphrase from ``$VMCLIENT_ADMIN_PASSPHRASE`` (scripts, tests)."""
    value = os.environ.get(ENV_PASSPHRASE)
    if not value:
        raise UsageError(f"the admin keys are encrypted: give the passphrase on a terminal, in "
                         f"{ENV_PASSPHRASE} or with --passphrase-file")
    return value.encode()


@dataclass(frozen=True)
class AdminKeys:
    dir: Path
    admin: Ed25519PrivateKey
    escrow: X25519PrivateKey

    def known_serial(self, repository: str) -> int:
        return int(_read_serials(self.dir).get(repository, 0))

    @property
    def orders(self) -> OrderNumbers:
        return OrderNumbers(self.dir / ORDERS)

    def record_serial(self, repository: str, serial: int) -> None:
        serials = _read_serials(self.dir)
        serials[repository] = max(serial, int(serials.get(repository, 0)))
        write_private(self.dir / SERIALS, json.dumps(serials, sort_keys=True).encode())


def check_outside(key_dir: Path, repo: Path) -> None:
    k, r = key_dir.resolve(), repo.resolve()
    if k == r or r in k.parents:
        raise UsageError(f"refusing to keep the admin keys inside the repository ({key_dir} is "
                         f"under {repo}): the storage server must never see them")


def create(key_dir: Path, passphrase: bytes | None = None) -> AdminKeys:
    """New keys in ``key_dir`` (encrypted under ``passphrase`` unless None); existing
    keys there are kept and reused."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    on_token = key_dir / token.TOKEN_FILE
    used = (key_dir / ADMIN_KEY).exists() or (on_token.exists() and (key_dir / SERIALS).exists())
    if used or (key_dir / ESCROW_KEY).exists():  # a missing escrow key is refused, not remade
        return load(key_dir, (lambda: passphrase) if passphrase else env_passphrase)
    admin = token.load(on_token) if on_token.exists() else Ed25519PrivateKey.generate()
    k = AdminKeys(key_dir, admin, X25519PrivateKey.generate())
    store(k, passphrase)
    return k


def store(k: AdminKeys, passphrase: bytes | None) -> None:
    """Write both keys (replacing each atomically), one fresh salt for both; a signing
    key on a token stays there."""
    kdf = KDF(os.urandom(16)) if passphrase else None
    password = kdf.derive(passphrase) if kdf and passphrase else None
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    for name, key in ((ADMIN_KEY, k.admin), (ESCROW_KEY, k.escrow)):
        if isinstance(key, token.TokenSigningKey):
            continue
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                enc)
        write_private(k.dir / name, (kdf.header() if kdf else b"") + pem)


def key_files(key_dir: Path) -> tuple[str, ...]:
    """The private key files of ``key_dir``: both, or the escrow key's alone when the
    signing key is on a token."""
    return (ESCROW_KEY,) if (key_dir / token.TOKEN_FILE).exists() else (ADMIN_KEY, ESCROW_KEY)


def is_encrypted(key_dir: Path) -> bool:
    return all(ENCRYPTED in (key_dir / n).read_bytes() for n in key_files(key_dir))


def load(key_dir: Path, passphrase: Passphrase = env_passphrase, *,
         warn: bool = True) -> AdminKeys:
    """Both keys; ``passphrase`` is asked at most once, only for encrypted ones."""
    asked: list[bytes] = []

    def ask() -> bytes:
        if not asked:
            asked.append(passphrase())
        return asked[0]

    if (key_dir / token.TOKEN_FILE).exists() and (key_dir / ADMIN_KEY).exists():
        raise ConfigError(key_dir / token.TOKEN_FILE, "", f"{key_dir} also holds {ADMIN_KEY}: "
                          "one signing key only (move the one not in use away)")
    escrow = load_key(key_dir / ESCROW_KEY, X25519PrivateKey, ask)  # type: ignore[type-abstract]
    if (key_dir / token.TOKEN_FILE).exists():
        admin: Ed25519PrivateKey = token.load(key_dir / token.TOKEN_FILE)
    else:
        admin = load_key(key_dir / ADMIN_KEY, Ed25519PrivateKey, ask)  # type: ignore[type-abstract]
    plain = [n for n in key_files(key_dir) if ENCRYPTED not in (key_dir / n).read_bytes()]
    if plain and warn:
        print(f"warning: {key_dir}: {' and '.join(plain)} not encrypted: anyone who copies "
              "the file can sign catalogs and orders or read every VM; `vmclient-admin "
              "protect-keys` encrypts them under a passphrase", file=sys.stderr, flush=True)
    return AdminKeys(key_dir, admin, escrow)


def load_key(path: Path, kind: type[K], passphrase: Passphrase) -> K:
    """One private key file of ``kind``, plain or encrypted (its own scrypt line)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(path, "", "missing; run `vmclient-admin init` first or pass "
                          "--key-dir") from None
    password = None
    if ENCRYPTED in data:
        kdf = KDF.parse(data.split(b"\n", 1)[0], path)
        password = kdf.derive(passphrase())
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except ValueError as exc:
        if password is not None:
            raise ConfigError(path, "", "wrong passphrase (or the file is damaged)") from None
        raise ConfigError(path, "", f"not a PEM private key: {exc}") from exc
    except TypeError as exc:  # encrypted without our line, or the reverse
        raise ConfigError(path, "", f"cannot be read: {exc}") from exc
    if not isinstance(key, kind):
        what = "X25519 (escrow)" if kind is X25519PrivateKey else "Ed25519 (admin signing)"
        raise ConfigError(path, "", f"not an {what} private key")
    return key


def _read_serials(key_dir: Path) -> dict[str, int]:
    try:
        return dict(json.loads((key_dir / SERIALS).read_text()))
    except FileNotFoundError:
        return {}


