"""Manifests (image versions and VM snapshots), chunk maps, indexes, pack headers.

One manifest type serves both the Receiver (an image version) and the
Synchronizer (a VM snapshot): one code path.  Each ``to_bytes`` gives the
canonical plaintext; each ``parse`` is strict and raises
:class:`RemoteIntegrityError` naming object, id, path and field.
Sealing and signing are done by :mod:`vmclient.store.repo`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from .crypto import ID_SIZE
from .errors import RemoteIntegrityError, UnsupportedVersion
from .format import HEX_ID_RE, NAME_RE, Reader, b64, canonical_json

FORMAT_VERSION = 1
ZERO_ID = bytes(ID_SIZE)  # chunk of zeros: not stored
BASE_ID = b"\xff" * ID_SIZE  # same as the base image's chunk at this index
MANIFEST_KINDS = ("image", "snapshot")
DISK_ROLES = ("system", "user", "memory")
_RECORD = struct.Struct(">32sQII")  # chunk id, offset in pack, stored length, plaintext length


@dataclass(frozen=True)
class ChunkMap:
    """A disk (or saved memory image) as a sequence of fixed-size chunk ids."""

    name: str
    role: str
    size: int
    chunk_size: int
    ids: tuple[bytes, ...]
    base: str = ""  # "image-name/version" the BASE_ID entries refer to

    def __post_init__(self) -> None:
        expected = -(-self.size // self.chunk_size)
        if len(self.ids) != expected:
            raise ValueError(f"disk {self.name}: {len(self.ids)} chunk ids for {expected} chunks")

    def stored_ids(self) -> set[bytes]:
        """Ids that must be present in the chunk store (not zero, not base)."""
        return {i for i in self.ids if i not in (ZERO_ID, BASE_ID)}

    def to_doc(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role, "size": self.size,
                "chunk_size": self.chunk_size, "base": self.base, "chunks": b64(b"".join(self.ids))}

    @classmethod
    def from_reader(cls, r: Reader) -> ChunkMap:
        name = r.text("name", pattern=NAME_RE)
        role = r.text("role", choices=DISK_ROLES)
        size = r.integer("size", lo=0, hi=1 << 50)
        chunk_size = r.integer("chunk_size", lo=4096, hi=16 << 20)
        base = r.text("base")
        raw = r.b64("chunks", multiple=ID_SIZE)
        ids = tuple(raw[i:i + ID_SIZE] for i in range(0, len(raw), ID_SIZE))
        if len(ids) != -(-size // chunk_size):
            r.fail("chunks", f"{len(ids)} ids for a {size}-byte disk of {chunk_size}-byte chunks")
        if BASE_ID in ids and not base:
            r.fail("base", "empty, but chunks refer to a base image")
        r.done()
        return cls(name, role, size, chunk_size, ids, base)


@dataclass(frozen=True)
class Manifest:
    """An image version (kind ``image``) or a VM snapshot (kind ``snapshot``).

    ``subject`` is the image name or the VM id; ``label`` the image version or
    the snapshot id; ``seq`` increases strictly per subject (image version
    number, snapshot sequence); ``device`` is the writing device for snapshots.
    """

    kind: str
    subject: str
    label: str
    seq: int
    created: int
    key_check: str
    disks: tuple[ChunkMap, ...]
    device: str = ""
    parent: str = ""
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def object_id(self) -> str:
        return manifest_id(self.kind, self.subject, self.label)

    def stored_ids(self) -> set[bytes]:
        return set().union(*(d.stored_ids() for d in self.disks)) if self.disks else set()

    def to_bytes(self) -> bytes:
        return canonical_json({
            "version": FORMAT_VERSION, "kind": self.kind, "subject": self.subject,
            "label": self.label, "seq": self.seq, "created": self.created,
            "key_check": self.key_check, "device": self.device, "parent": self.parent,
            "meta": dict(self.meta), "disks": [d.to_doc() for d in self.disks]})

    @classmethod
    def parse(cls, untrusted_body: bytes, kind: str, subject: str, label: str,
              path: str) -> Manifest:
        """Parse and check that the body names the object it was stored as."""
        r = Reader.parse(untrusted_body, "manifest", manifest_id(kind, subject, label), path)
        r.version({FORMAT_VERSION})
        r.const("kind", kind)
        r.const("subject", subject)
        r.const("label", label)
        seq = r.integer("seq", lo=0)
        created = r.integer("created", lo=0)
        key_check = r.text("key_check")
        device = r.text("device")
        parent = r.text("parent")
        meta_r = r.table("meta")
        meta = {k: meta_r.text(k) for k in meta_r.names()}
        disks = tuple(ChunkMap.from_reader(d) for d in r.tables("disks"))
        names = [d.name for d in disks]
        if len(set(names)) != len(names):
            r.fail("disks", "duplicate disk name")
        if kind == "snapshot" and not device:
            r.fail("device", "a snapshot names the device that wrote it")
        r.done()
        return cls(kind, subject, label, seq, created, key_check, disks, device, parent, meta)


def manifest_id(kind: str, subject: str, label: str) -> str:
    return f"{kind}:{subject}/{label}"


@dataclass(frozen=True)
class BlobRef:
    """Where one chunk lives: pack name, offset and stored length (sealed bytes)."""

    pack: str
    offset: int
    length: int
    plain_length: int


def encode_records(entries: Sequence[tuple[bytes, int, int, int]]) -> bytes:
    return b"".join(_RECORD.pack(*e) for e in entries)


def decode_records(raw: bytes, r: Reader, name: str) -> Iterator[tuple[bytes, int, int, int]]:
    if len(raw) % _RECORD.size:
        r.fail(name, f"length {len(raw)} is not a multiple of {_RECORD.size}")
    yield from _RECORD.iter_unpack(raw)


@dataclass(frozen=True)
class Index:
    """Which chunks each pack holds; the reader merges every index of a store."""

    name: str
    packs: dict[str, tuple[tuple[bytes, int, int, int], ...]]

    def to_bytes(self) -> bytes:
        return canonical_json({
            "version": FORMAT_VERSION,
            "packs": [{"name": p, "blobs": b64(encode_records(recs))}
                      for p, recs in sorted(self.packs.items())]})

    @classmethod
    def parse(cls, untrusted_body: bytes, name: str, path: str) -> Index:
        r = Reader.parse(untrusted_body, "index", name, path)
        r.version({FORMAT_VERSION})
        packs: dict[str, tuple[tuple[bytes, int, int, int], ...]] = {}
        for p in r.tables("packs"):
            pack = p.text("name", pattern=HEX_ID_RE)
            packs[pack] = tuple(decode_records(p.b64("blobs"), p, "blobs"))
            p.done()
        r.done()
        return cls(name, packs)

    def refs(self) -> Iterator[tuple[bytes, BlobRef]]:
        for pack, recs in self.packs.items():
            for cid, off, length, plain in recs:
                yield cid, BlobRef(pack, off, length, plain)


def pack_header_bytes(records: Sequence[tuple[bytes, int, int, int]]) -> bytes:
    return bytes([FORMAT_VERSION]) + encode_records(records)


def parse_pack_header(untrusted: bytes, pack: str, path: str
                      ) -> tuple[tuple[bytes, int, int, int], ...]:
    r = Reader({}, "pack-header", pack, path)
    if not untrusted or untrusted[0] != FORMAT_VERSION:
        raise UnsupportedVersion("pack-header", pack, path,
                                 f"format version {untrusted[0] if untrusted else 'none'}")
    records = tuple(decode_records(untrusted[1:], r, "records"))
    end = 0
    for cid, off, length, _plain in records:
        if off != end:
            raise RemoteIntegrityError("pack-header", pack, path,
                                       f"blob {cid.hex()} at {off}, expected {end}")
        end = off + length
    return records
