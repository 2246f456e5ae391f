"""The admin's key directory: the Ed25519 signing key, the X25519 escrow key, catalog state.

Kept offline, with the admin, never inside the repository: ``init`` refuses a
key directory inside a local repository.  Private keys are PKCS#8 PEM files,
0600, in a 0700 directory.  ``serials.json`` remembers the highest catalog
serial this admin has signed per repository, so a server that serves an old
catalog cannot make the admin re-issue a serial (the laptops would see two
catalogs with one serial and refuse them).  ``orders.json`` does the same for
each device's order numbers (:class:`vmclient.manage.admin.OrderNumbers`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import ConfigError, UsageError
from ..manage.admin import OrderNumbers

ADMIN_KEY = "admin.pem"
ESCROW_KEY = "escrow.pem"
SERIALS = "serials.json"
ORDERS = "orders.json"


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
        _write_private(self.dir / SERIALS, json.dumps(serials, sort_keys=True).encode())


def check_outside(key_dir: Path, repo: Path) -> None:
    k, r = key_dir.resolve(), repo.resolve()
    if k == r or r in k.parents:
        raise UsageError(f"refusing to keep the admin keys inside the repository ({key_dir} is "
                         f"under {repo}): the storage server must never see them")


def create(key_dir: Path) -> AdminKeys:
    """New keys in ``key_dir``; existing keys there are kept and reused."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (key_dir / ADMIN_KEY).exists() or (key_dir / ESCROW_KEY).exists():
        return load(key_dir)
    admin, escrow = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    for name, key in ((ADMIN_KEY, admin), (ESCROW_KEY, escrow)):
        _write_private(key_dir / name, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return AdminKeys(key_dir, admin, escrow)


def load(key_dir: Path) -> AdminKeys:
    keys = []
    for name, kind in ((ADMIN_KEY, Ed25519PrivateKey), (ESCROW_KEY, X25519PrivateKey)):
        path = key_dir / name
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError:
            raise ConfigError(path, "", "missing; run `vmclient-admin init` first or pass "
                              "--key-dir") from None
        except ValueError as exc:
            raise ConfigError(path, "", f"not a PEM private key: {exc}") from exc
        if not isinstance(key, kind):
            raise ConfigError(path, "", f"is not an {kind.__name__[:-10]} key")
        keys.append(key)
    return AdminKeys(key_dir, keys[0], keys[1])  # type: ignore[arg-type]


def _read_serials(key_dir: Path) -> dict[str, int]:
    try:
        return dict(json.loads((key_dir / SERIALS).read_text()))
    except FileNotFoundError:
        return {}


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
