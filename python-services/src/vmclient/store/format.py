"""Canonical encodings and strict readers shared by every repository object.

* ``canonical_json``: the one byte form of a document (sorted keys, no
  whitespace, UTF-8, integers and strings only) so signatures and known-answer
  tests are stable.
* ``Reader``: takes an ``untrusted_*`` mapping and hands out validated fields;
  every error is a :class:`RemoteIntegrityError` naming the object type, id,
  path and the dotted field.  Unknown fields are errors too.
* ``encode_payload``/``decode_payload``: the one-byte codec prefix inside a
  sealed object (0 = stored, 1 = zstd).
* ``signed_envelope``/``open_envelope``: ``VMCG 01 | signer id (16) | Ed25519
  signature (64) | body``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import zstandard

from . import crypto
from .errors import RemoteIntegrityError, UnknownSigner, UnsupportedVersion

CODEC_STORED = 0
CODEC_ZSTD = 1
MAX_DOCUMENT = 256 << 20  # no manifest, index or catalog decompresses to more
ENVELOPE_MAGIC = b"VMCG"
ENVELOPE_VERSION = 1
_KEYID_LEN = 16
ENVELOPE_HEADER = len(ENVELOPE_MAGIC) + 1 + _KEYID_LEN + crypto.SIG_SIZE
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
HEX_ID_RE = re.compile(r"^[0-9a-f]{64}$")
# a device's name (asset tag, host name, e-mail): no spaces, no controls, nothing a shell
# or a terminal reads specially; checked wherever a name is made or read
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    _check_canonical(doc, "")
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_canonical(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise TypeError(f"floats are not canonical ({where})")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _check_canonical(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_canonical(v, f"{where}[{i}]")


_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    """One compressor per thread and level: creating one per chunk costs ~40 % of the work."""
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("zstd", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread (restores open chunks in several worker threads)."""
    d: zstandard.ZstdDecompressor | None = getattr(_local, "unzstd", None)
    if d is None:
        d = _local.unzstd = zstandard.ZstdDecompressor()
    return d


_ZSTD_PREFIX, _STORED_PREFIX = bytes([CODEC_ZSTD]), bytes([CODEC_STORED])


def encode_payload(data: bytes | bytearray | memoryview, level: int | None = 3) -> bytes:
    """Prefix the codec byte; zstd-compress when ``level`` is set and it helps."""
    if level is not None:
        packed = _compressor(level).compress(data)
        if len(packed) < len(data):
            return _ZSTD_PREFIX + packed
    return _STORED_PREFIX + data  # one copy, whatever the buffer


def declared_length(payload: bytes | memoryview, obj_type: str, obj_id: str, path: str
                    ) -> int | None:
    """The plaintext length an (authenticated) payload states without being decoded: a
    stored one's, or what its zstd frame declares (None if the frame does not say)."""
    if not payload:
        raise RemoteIntegrityError(obj_type, obj_id, path, "empty payload")
    if payload[0] == CODEC_STORED:
        return len(payload) - 1
    if payload[0] == CODEC_ZSTD:
        try:
            declared = zstandard.frame_content_size(memoryview(payload)[1:])
        except zstandard.ZstdError as exc:
            raise RemoteIntegrityError(obj_type, obj_id, path, f"zstd: {exc}") from None
        return None if declared < 0 else int(declared)
    raise UnsupportedVersion(obj_type, obj_id, path, f"payload codec {payload[0]}")


def decode_payload(payload: bytes, obj_type: str, obj_id: str, path: str,
                   *, limit: int = MAX_DOCUMENT) -> bytes:
    """Inverse of :func:`encode_payload` (on authenticated bytes)."""
    if not payload:
        raise RemoteIntegrityError(obj_type, obj_id, path, "empty payload")
    if payload[0] == CODEC_STORED:
        return payload[1:]
    if payload[0] == CODEC_ZSTD:
        frame = memoryview(payload)[1:]
        try:
            # a frame that declares its size is decompressed into a buffer of that size,
            # whatever max_output_size says: check the declared size before
            declared = zstandard.frame_content_size(frame)
        except zstandard.ZstdError as exc:
            raise RemoteIntegrityError(obj_type, obj_id, path, f"zstd: {exc}") from None
        if declared > limit:
            raise RemoteIntegrityError(obj_type, obj_id, path,
                                       f"zstd frame declares {declared} bytes, more than the "
                                       f"{limit} a {obj_type} may decompress to")
        try:
            out = _decompressor().decompress(frame, max_output_size=limit)
        except zstandard.ZstdError as exc:
            raise RemoteIntegrityError(obj_type, obj_id, path, f"zstd: {exc}") from None
        if len(out) > limit:
            raise RemoteIntegrityError(obj_type, obj_id, path, "payload too large")
        return out
    raise UnsupportedVersion(obj_type, obj_id, path, f"payload codec {payload[0]}")


def signed_envelope(key: crypto.Ed25519PrivateKey, obj_type: str, obj_id: str,
                    body: bytes) -> bytes:
    signer = bytes.fromhex(crypto.key_id(key.public_key()))
    sig = crypto.sign(key, obj_type, obj_id, body)
    return ENVELOPE_MAGIC + bytes([ENVELOPE_VERSION]) + signer + sig + body


def open_envelope(signers: Mapping[str, crypto.Ed25519PublicKey], untrusted_blob: bytes,
                  obj_type: str, obj_id: str, path: str) -> tuple[str, bytes]:
    """Verify an envelope signed by one of ``signers`` (key id → key); (signer, body)."""
    if len(untrusted_blob) < ENVELOPE_HEADER:
        raise RemoteIntegrityError(obj_type, obj_id, path, "signed object truncated")
    if untrusted_blob[:4] != ENVELOPE_MAGIC:
        raise RemoteIntegrityError(obj_type, obj_id, path, "not a signed object (bad magic)")
    if untrusted_blob[4] != ENVELOPE_VERSION:
        raise UnsupportedVersion(obj_type, obj_id, path, f"envelope version {untrusted_blob[4]}")
    untrusted_signer = untrusted_blob[5:5 + _KEYID_LEN].hex()
    key = signers.get(untrusted_signer)
    if key is None:
        raise UnknownSigner(obj_type, obj_id, path, untrusted_signer)
    sig = untrusted_blob[5 + _KEYID_LEN:ENVELOPE_HEADER]
    body = untrusted_blob[ENVELOPE_HEADER:]
    crypto.verify(key, sig, obj_type, obj_id, body, path=path)
    return untrusted_signer, body


class Reader:
    """Validated access to one untrusted JSON object (a document or a nested table)."""

    def __init__(self, untrusted: Any, obj_type: str, obj_id: str, path: str,
                 prefix: str = "") -> None:
        self.obj_type, self.obj_id, self.path, self.prefix = obj_type, obj_id, path, prefix
        if not isinstance(untrusted, dict):
            self.fail("", f"must be an object, not {type(untrusted).__name__}")
        self._untrusted: dict[str, Any] = untrusted
        self._seen: set[str] = set()

    @classmethod
    def parse(cls, untrusted_body: bytes, obj_type: str, obj_id: str, path: str) -> Reader:
        try:
            untrusted = json.loads(untrusted_body.decode("utf-8"))
        except ValueError as exc:  # also UnicodeDecodeError, a number of > 4300 digits
            raise RemoteIntegrityError(obj_type, obj_id, path, f"not JSON: {exc}") from None
        except RecursionError:
            raise RemoteIntegrityError(obj_type, obj_id, path,
                                       "not JSON: nested too deeply") from None
        if not _encodable(untrusted):
            raise RemoteIntegrityError(obj_type, obj_id, path, "not JSON text: a string holds "
                                       "a lone UTF-16 surrogate (\\ud800-\\udfff)")
        return cls(untrusted, obj_type, obj_id, path)

    def fail(self, name: str, problem: str) -> None:
        field = (self.prefix + name) or "(document)"
        raise RemoteIntegrityError(self.obj_type, self.obj_id, self.path,
                                   f"field {field!r}: {problem}")

    def _get(self, name: str, kinds: type | tuple[type, ...], what: str) -> Any:
        self._seen.add(name)
        if name not in self._untrusted:
            self.fail(name, "missing")
        value = self._untrusted[name]
        if not isinstance(value, kinds) or isinstance(value, bool) != (kinds is bool):
            self.fail(name, f"must be {what}, not {type(value).__name__}")
        return value

    def names(self) -> list[str]:
        return sorted(self._untrusted)

    def version(self, supported: Iterable[int]) -> int:
        value = self.integer("version", lo=0)
        if value not in set(supported):
            raise UnsupportedVersion(self.obj_type, self.obj_id, self.path,
                                     f"format version {value}")
        return value

    def const(self, name: str, expected: str) -> str:
        value = self.text(name)
        if value != expected:
            self.fail(name, f"is {value!r}, expected {expected!r}")
        return value

    def text(self, name: str, *, pattern: re.Pattern[str] | None = None,
            choices: Iterable[str] = ()) -> str:
        value: str = self._get(name, str, "a string")
        allowed = tuple(choices)
        if allowed and value not in allowed:
            self.fail(name, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"{value!r} does not match {pattern.pattern}")
        return value

    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
        value: int = self._get(name, int, "a whole number")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(name, f"{value} is out of range [{lo}, {hi}]")
        return value

    def flag(self, name: str) -> bool:
        value: bool = self._get(name, bool, "true or false")
        return value

    def b64(self, name: str, *, size: int | None = None, multiple: int | None = None) -> bytes:
        text = self.text(name)
        try:
            value = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error, or a character outside ASCII
            self.fail(name, "not base64")
        if size is not None and len(value) != size:
            self.fail(name, f"has {len(value)} bytes, expected {size}")
        if multiple is not None and len(value) % multiple:
            self.fail(name, f"length {len(value)} is not a multiple of {multiple}")
        return value

    def table(self, name: str) -> Reader:
        return Reader(self._get(name, dict, "an object"), self.obj_type, self.obj_id,
                      self.path, f"{self.prefix}{name}.")

    def tables(self, name: str) -> list[Reader]:
        items = self._get(name, list, "a list")
        return [Reader(v, self.obj_type, self.obj_id, self.path, f"{self.prefix}{name}[{i}].")
                for i, v in enumerate(items)]

    def strs(self, name: str, check: Callable[[str], bool] = lambda _: True) -> list[str]:
        items = self._get(name, list, "a list")
        for i, v in enumerate(items):
            if not isinstance(v, str) or not check(v):
                self.fail(f"{name}[{i}]", f"invalid entry {v!r}")
        return list(items)

    def done(self) -> None:
        """Refuse fields this version does not define."""
        unknown = sorted(set(self._untrusted) - self._seen)
        if unknown:
            self.fail(unknown[0], "unknown field")


def _encodable(untrusted: Any) -> bool:
    """Does every string of a decoded document encode as UTF-8?  A ``\\ud800`` escape
    decodes to a lone surrogate that no writer of ours makes and that fails wherever the
    string is written again (``canonical_json`` of a record or of a parent's fields)."""
    todo = [untrusted]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value)
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def shown(untrusted: str) -> str:
    """``untrusted`` safe for a terminal: every non-printable character escaped.

    Newlines, ESC (the start of OSC 52 clipboard writes and cursor moves), BEL,
    bidi overrides and other controls come out as ``\\n``, ``\\x1b``, ``\\u202e``…, so
    text from the repository can neither forge lines of a script printed around
    it nor drive the admin's terminal.
    """
    if untrusted.isprintable():
        return untrusted
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in untrusted)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
