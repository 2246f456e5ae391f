"""Packs: many sealed chunks in one repository object (restic-style).

Layout of a pack named ``P`` (64 hex digits, random)::

    blob_0 | blob_1 | ... | blob_n-1 | sealed header | header length (u32, big endian)

Each blob is ``seal(enc key, "chunk", <chunk id hex>, codec byte | data)``; the
header is ``seal(enc key, "pack-header", P, version | records)`` with one
48-byte record (chunk id, offset, stored length, plaintext length) per blob.
The header lets a client that crashed before writing the index find what it
already uploaded; indexes make it unnecessary to read headers otherwise.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import crypto
from .errors import RemoteIntegrityError
from .format import declared_length, decode_payload, encode_payload
from .objects import BlobRef, pack_header_bytes, parse_pack_header

TRAILER = struct.Struct(">I")
DEFAULT_PACK_TARGET = 16 << 20


def new_pack_name() -> str:
    return secrets.token_hex(32)


def seal_chunk(keys: crypto.KeySet, cid: bytes, plaintext: bytes | bytearray,
               level: int | None = 1) -> bytes:
    """One blob: the chunk compressed (if that helps) and sealed, its id bound in.

    Pure and thread-safe (zstd, the bulk of the work, releases the GIL): the upload
    pipeline runs it in worker threads.
    """
    return crypto.seal(keys.enc, "chunk", cid.hex(), encode_payload(plaintext, level))


@dataclass
class PackBuilder:
    """Accumulates sealed chunks until ``full``; ``finish`` gives the pack bytes."""

    keys: crypto.KeySet
    target: int = DEFAULT_PACK_TARGET
    level: int | None = 1
    name: str = field(default_factory=new_pack_name)
    _parts: list[bytes] = field(default_factory=list)
    _records: list[tuple[bytes, int, int, int]] = field(default_factory=list)
    _size: int = 0

    def add(self, cid: bytes, plaintext: bytes | bytearray) -> None:
        self.add_sealed(cid, seal_chunk(self.keys, cid, plaintext, self.level), len(plaintext))

    def add_sealed(self, cid: bytes, blob: bytes, plain_length: int) -> None:
        """Append a blob :func:`seal_chunk` made (with this builder's keys)."""
        self._records.append((cid, self._size, len(blob), plain_length))
        self._parts.append(blob)
        self._size += len(blob)

    @property
    def full(self) -> bool:
        return self._size >= self.target

    def __len__(self) -> int:
        return len(self._records)

    def finish(self) -> tuple[bytes, tuple[tuple[bytes, int, int, int], ...]]:
        header = crypto.seal(self.keys.enc, "pack-header", self.name,
                             pack_header_bytes(self._records))
        data = b"".join([*self._parts, header, TRAILER.pack(len(header))])
        return data, tuple(self._records)


def open_blob(keys: crypto.KeySet, cid: bytes, ref: BlobRef,
              untrusted_blob: bytes | memoryview, path: str) -> bytes:
    """Decrypt one chunk read from a pack and check its id and length."""
    obj_id = cid.hex()
    if len(untrusted_blob) != ref.length:
        raise RemoteIntegrityError("chunk", obj_id, path,
                                   f"read {len(untrusted_blob)} bytes, index says {ref.length}")
    payload = crypto.open_sealed(keys.enc, "chunk", obj_id, untrusted_blob, path=path)
    data = decode_payload(payload, "chunk", obj_id, path, limit=ref.plain_length)
    if len(data) != ref.plain_length:
        raise RemoteIntegrityError("chunk", obj_id, path,
                                   f"{len(data)} bytes, index says {ref.plain_length}")
    if crypto.chunk_id(keys.chunk_id, data) != cid:
        raise RemoteIntegrityError("chunk", obj_id, path, "content does not match its id")
    return data


def authenticate_blob(keys: crypto.KeySet, cid: bytes, ref: BlobRef,
                      untrusted_blob: bytes | memoryview, path: str) -> None:
    """Check that one blob read from a pack was sealed as chunk ``cid``, without opening
    its content: its length, the AEAD tag (the id is bound into it), the codec and the
    plaintext length the payload states.

    What a local cache that stays encrypted checks before it keeps a blob: nobody
    without the key can make one pass.  The content itself (decompression, the
    plaintext length, the HMAC against the id) is checked by :func:`open_blob`
    whenever the chunk is used (repository-format.md §9, rule 5).
    """
    obj_id = cid.hex()
    if len(untrusted_blob) != ref.length:
        raise RemoteIntegrityError("chunk", obj_id, path,
                                   f"read {len(untrusted_blob)} bytes, index says {ref.length}")
    payload = crypto.open_sealed(keys.enc, "chunk", obj_id, untrusted_blob, path=path)
    stated = declared_length(payload, "chunk", obj_id, path)
    if stated is not None and stated != ref.plain_length:
        raise RemoteIntegrityError("chunk", obj_id, path,
                                   f"{stated} bytes, index says {ref.plain_length}")


def pack_size(records: Sequence[tuple[bytes, int, int, int]]) -> int:
    """The size of the pack holding exactly ``records`` (as its index lists them)."""
    end = max((off + length for _cid, off, length, _plain in records), default=0)
    return end + crypto.SEAL_OVERHEAD + len(pack_header_bytes(records)) + TRAILER.size


def header_length(untrusted_trailer: bytes, pack: str, path: str, pack_size: int) -> int:
    if len(untrusted_trailer) < TRAILER.size:  # the server sent less than asked for
        raise RemoteIntegrityError("pack-header", pack, path,
                                   f"trailer of {len(untrusted_trailer)} bytes")
    length = int(TRAILER.unpack(untrusted_trailer[-TRAILER.size:])[0])
    if length + TRAILER.size > pack_size or length < crypto.SEAL_OVERHEAD:
        raise RemoteIntegrityError("pack-header", pack, path, f"bad header length {length}")
    return length


def open_header(keys: crypto.KeySet, pack: str, untrusted_header: bytes, path: str,
                pack_size: int) -> tuple[tuple[bytes, int, int, int], ...]:
    plain = crypto.open_sealed(keys.enc, "pack-header", pack, untrusted_header, path=path)
    records = parse_pack_header(plain, pack, path)
    end = records[-1][1] + records[-1][2] if records else 0
    if end + len(untrusted_header) + TRAILER.size != pack_size:
        raise RemoteIntegrityError("pack-header", pack, path, "blobs do not fill the pack")
    return records
