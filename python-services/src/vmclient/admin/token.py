"""The admin's Ed25519 signing key on a PKCS#11 token (a smart card or an HSM whose module
signs with ``CKM_EDDSA``; SoftHSM 2 in the tests), through ``python-pkcs11``.

A key directory that holds ``admin.pkcs11`` instead of ``admin.pem`` names the key:

    module = "/usr/lib/softhsm/libsofthsm2.so"   # the token's PKCS#11 module
    token = "vmclient-admin"                     # the token's label
    key = "admin"                                # the key pair's label (CKA_LABEL)

The private key never leaves the token: :class:`TokenSigningKey` is a
``cryptography`` ``Ed25519PrivateKey`` whose ``sign`` asks the token (``CKM_EDDSA``,
pure Ed25519, the same signature a file key makes) and whose ``private_bytes``
refuses, so every signing function of the store takes it as it is.  The PIN comes
from ``$VMCLIENT_ADMIN_PIN``, else a prompt on a terminal.  ``python-pkcs11``
(meta-python: ``python3-pkcs11``) is imported only when such a file exists.
"""

from __future__ import annotations

import os
import sys
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..config import string_table
from ..errors import ConfigError, UsageError

TOKEN_FILE = "admin.pkcs11"
ENV_PIN = "VMCLIENT_ADMIN_PIN"
SETTINGS = ("module", "token", "key")


@dataclass(frozen=True)
class TokenKeyRef:
    """Where the key is: the module, the token's label, the key's label (pure parse)."""

    module: Path
    token: str
    key: str

    @classmethod
    def parse(cls, untrusted_text: str, path: Path) -> TokenKeyRef:
        try:
            untrusted = tomllib.loads(untrusted_text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, "", str(exc)) from exc
        conf = string_table(untrusted, SETTINGS, path)
        missing = [n for n in SETTINGS if n not in conf]
        if missing:
            raise ConfigError(path, missing[0], "missing (module, token and key are needed)")
        return cls(Path(conf["module"]).expanduser(), conf["token"], conf["key"])


class TokenSigningKey(Ed25519PrivateKey):
    """An Ed25519 private key held by a PKCS#11 token: it signs, it is never exported."""

    def __init__(self, ref: TokenKeyRef, session: Any, private: Any, public: bytes) -> None:
        self.ref, self._session, self._private = ref, session, private
        self._public = Ed25519PublicKey.from_public_bytes(public)
        self._lock = threading.Lock()  # one operation at a time on a PKCS#11 session

    def sign(self, data: bytes | bytearray | memoryview) -> bytes:
        import pkcs11
        with self._lock:
            try:
                sig = bytes(self._private.sign(bytes(data), mechanism=pkcs11.Mechanism.EDDSA))
            except pkcs11.PKCS11Error as exc:
                raise ConfigError(self.ref.module, "", f"token {self.ref.token!r} did not sign "
                                  f"with key {self.ref.key!r}: {type(exc).__name__}") from exc
        self._public.verify(sig, data)  # a token that answers garbage is caught here
        return sig

    def public_key(self) -> Ed25519PublicKey:
        return self._public

    def private_bytes(self, encoding: serialization.Encoding,
                      format: serialization.PrivateFormat,
                      encryption_algorithm: serialization.KeySerializationEncryption) -> bytes:
        raise UsageError(f"the admin signing key is on the PKCS#11 token {self.ref.token!r}: "
                         "it cannot be exported")

    def private_bytes_raw(self) -> bytes:
        raise UsageError(f"the admin signing key is on the PKCS#11 token {self.ref.token!r}: "
                         "it cannot be exported")

    def __copy__(self) -> TokenSigningKey:
        return self


def pin(ref: TokenKeyRef) -> str:
    value = os.environ.get(ENV_PIN)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"the admin signing key is on the PKCS#11 token {ref.token!r}: give "
                         f"its PIN in {ENV_PIN} or on a terminal")
    import getpass
    return getpass.getpass(f"PIN of the PKCS#11 token {ref.token!r}: ")


_OPEN: dict[TokenKeyRef, TokenSigningKey] = {}  # logged in once per process (PKCS#11's rule)


def load(path: Path) -> TokenSigningKey:
    """The signing key that ``path`` (an ``admin.pkcs11`` file) names, logged in."""
    try:
        ref = TokenKeyRef.parse(path.read_text(), path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", str(exc)) from exc
    if ref not in _OPEN:
        _OPEN[ref] = _open(ref, path)
    return _OPEN[ref]


def _open(ref: TokenKeyRef, path: Path) -> TokenSigningKey:
    try:
        import pkcs11
        from asn1crypto.core import OctetString
    except ImportError:
        raise ConfigError(path, "", "the key is on a PKCS#11 token but python-pkcs11 is not "
                          "installed (pip install python-pkcs11, or python3-pkcs11)") from None
    try:
        lib = pkcs11.lib(str(ref.module))
    except (OSError, RuntimeError, pkcs11.PKCS11Error) as exc:
        raise ConfigError(path, "module", f"cannot load {ref.module}: {exc}") from exc
    try:
        token = lib.get_token(token_label=ref.token)
    except pkcs11.NoSuchToken:
        raise ConfigError(path, "token", f"no token labelled {ref.token!r} (is it plugged "
                          "in?)") from None
    except pkcs11.MultipleTokensReturned:
        raise ConfigError(path, "token", f"several tokens are labelled {ref.token!r}") from None
    try:
        session = token.open(user_pin=pin(ref))
    except pkcs11.PinIncorrect:
        raise ConfigError(path, "", f"wrong PIN for the token {ref.token!r}") from None
    except pkcs11.PKCS11Error as exc:
        raise ConfigError(path, "", f"cannot log in to the token {ref.token!r}: "
                          f"{type(exc).__name__}") from exc
    try:
        kind = pkcs11.KeyType.EC_EDWARDS
        private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, kind, label=ref.key)
        public = session.get_key(pkcs11.ObjectClass.PUBLIC_KEY, kind, label=ref.key)
        point = bytes(public[pkcs11.Attribute.EC_POINT])
    except pkcs11.NoSuchKey:
        session.close()
        raise ConfigError(path, "key", f"the token {ref.token!r} holds no Ed25519 key pair "
                          f"labelled {ref.key!r}") from None
    except pkcs11.MultipleObjectsReturned:
        session.close()
        raise ConfigError(path, "key", f"several keys on {ref.token!r} are labelled "
                          f"{ref.key!r}") from None
    raw = point if len(point) == 32 else OctetString.load(point).native  # DER or raw point
    if len(raw) != 32:
        session.close()
        raise ConfigError(path, "key", f"{ref.key!r} is not an Ed25519 public key")
    return TokenSigningKey(ref, session, private, raw)
