"""Fuzzing the repository readers: every signed or sealed object a server hands a client.

Each reader is fed twice: the stored object with its bytes mutated (the outer
check: envelope, seal, digest), and a mutated *body* signed or sealed with the
right key (so the inner parser is reached past a valid signature, as it would
be with a stolen or misused key).  The readers are the ones the daemons call
(``repo.get_*``, ``ChunkStore``), over an in-memory store.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.store import crypto, layout
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.documents import Catalog, ImageVersion, Pointer, RepoConfig, WrappedKey
from vmclient.store.format import (
    decode_payload,
    encode_payload,
    open_envelope,
    signed_envelope,
)
from vmclient.store.locks import lock_document, read_lock
from vmclient.store.objects import ChunkMap, Index, Manifest, pack_header_bytes
from vmclient.store.pack import PackBuilder, header_length, open_header
from vmclient.store.remote import MemoryStore
from vmclient.store.repo import (
    get_catalog,
    get_config,
    get_image_manifest,
    get_pointer,
    get_snapshot,
    get_wrapped_key,
)

from .mutate import mutated_bytes, mutated_json, outcome

ADMIN = crypto.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
DEVICE = crypto.Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
DEVICE_ID = crypto.key_id(DEVICE.public_key())
DEVICE_X = crypto.X25519PrivateKey.from_private_bytes(b"\x04" * 32)
KEYS = crypto.KeySet.derive(bytes(range(32)))
REPO = "0123456789abcdef0123456789abcdef"
HEX = "ab" * 32
K = 64 << 10

CONFIG = RepoConfig(REPO, 1, 1 << 20, crypto.raw_public(ADMIN.public_key()), b"\x07" * 32)
CATALOG = Catalog(REPO, 3, 10, {
    "win": (ImageVersion(1, HEX, 3 * K, 5, KEYS.check), ImageVersion(2, HEX, 1, 6, "x")),
    "lin": (ImageVersion(7, "cd" * 32, 0, 0, ""),),
})
POINTER = Pointer("vm1", DEVICE_ID, "s-000001", 4, 99, HEX)
WRAPPED = WrappedKey.create("vm:vm1", DEVICE_X.public_key(), KEYS)
DISKS = (ChunkMap("system", "system", 3 * K, K, (b"\x11" * 32, bytes(32), b"\xff" * 32),
                  "win/1"),
         ChunkMap("mem", "memory", 5, K, (b"\x22" * 32,)))
IMAGE = Manifest("image", "win", "2", 2, 7, KEYS.check, DISKS[:1], meta={"os": "w11"})
SNAPSHOT = Manifest("snapshot", "vm1", "s-000001", 1, 8, KEYS.check, DISKS, DEVICE_ID,
                    "s-000000", {"a": "b"})
INDEX = Index("ab" * 32, {"cd" * 32: ((b"\x11" * 32, 0, 100, 64),
                                       (b"\x22" * 32, 100, 50, 10))})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def doc(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


def signed(key: crypto.Ed25519PrivateKey, obj_type: str, obj_id: str, body: bytes) -> bytes:
    return signed_envelope(key, obj_type, obj_id, body)


def store_with(path: str, blob: bytes) -> MemoryStore:
    s = MemoryStore()
    s.objects[path] = blob
    return s


ADMIN_PUB = ADMIN.public_key()


def read_config(blob: bytes) -> object:
    return outcome(run, get_config(store_with(layout.CONFIG, blob), ADMIN_PUB))


def read_catalog(blob: bytes) -> object:
    return outcome(run, get_catalog(store_with(layout.CATALOG, blob), ADMIN_PUB, REPO,
                                    known_serial=2))


def read_pointer(blob: bytes) -> object:
    path = layout.vm_pointer(DEVICE_ID, "vm1")
    return outcome(run, get_pointer(store_with(path, blob), {DEVICE_ID: DEVICE.public_key()},
                                    DEVICE_ID, "vm1", known_seq=1))


def read_wrapped(blob: bytes) -> object:
    path = layout.vm_key(DEVICE_ID, "vm1", crypto.key_id(DEVICE_X.public_key()))
    return outcome(run, get_wrapped_key(store_with(path, blob), path,
                                        {DEVICE_ID: DEVICE.public_key()}, "vm:vm1", DEVICE_X))


def read_image_manifest(blob: bytes) -> object:
    path = layout.image_manifest("win", 2)
    return outcome(run, get_image_manifest(store_with(path, blob), KEYS, "win", 2,
                                           crypto.sha256_hex(blob)))


def read_snapshot(blob: bytes) -> object:
    path = layout.vm_snapshot(DEVICE_ID, "vm1", "s-000001")
    return outcome(run, get_snapshot(store_with(path, blob), {DEVICE_ID: DEVICE.public_key()},
                                     KEYS, device=DEVICE_ID, vm="vm1", snapshot="s-000001"))


def sealed_manifest(payload: bytes) -> bytes:
    return crypto.seal(KEYS.enc, "manifest", IMAGE.object_id, payload)


def signed_snapshot(payload: bytes) -> bytes:
    oid = SNAPSHOT.object_id
    return signed(DEVICE, "snapshot", oid, crypto.seal(KEYS.enc, "manifest", oid, payload))


CONFIG_BLOB = signed(ADMIN, "config", "config", CONFIG.to_bytes())
CATALOG_BLOB = signed(ADMIN, "catalog", "catalog", CATALOG.to_bytes())
POINTER_BLOB = signed(DEVICE, "pointer", "vm1/latest", POINTER.to_bytes())
WRAPPED_BLOB = signed(DEVICE, "wrapped-key", WRAPPED.object_id, WRAPPED.to_bytes())
IMAGE_BLOB = sealed_manifest(encode_payload(IMAGE.to_bytes()))
SNAPSHOT_BLOB = signed_snapshot(encode_payload(SNAPSHOT.to_bytes()))


def test_the_valid_objects_read_back() -> None:
    """The fuzzers' seeds are valid: a mutation, not the seed, makes a refusal."""
    assert read_config(CONFIG_BLOB) == CONFIG
    assert read_catalog(CATALOG_BLOB)[0] == CATALOG  # type: ignore[index]
    assert read_pointer(POINTER_BLOB) == POINTER
    assert read_wrapped(WRAPPED_BLOB).check == KEYS.check  # type: ignore[attr-defined]
    assert read_image_manifest(IMAGE_BLOB) == IMAGE
    assert read_snapshot(SNAPSHOT_BLOB) == SNAPSHOT


# --- the outer checks: envelope, seal, digest ------------------------------------------------

@given(st.sampled_from([(read_config, CONFIG_BLOB), (read_catalog, CATALOG_BLOB),
                        (read_pointer, POINTER_BLOB), (read_wrapped, WRAPPED_BLOB),
                        (read_image_manifest, IMAGE_BLOB), (read_snapshot, SNAPSHOT_BLOB)]),
       st.data())
def test_stored_objects_with_mutated_bytes(reader: tuple[Any, bytes], data: st.DataObject
                                           ) -> None:
    read, blob = reader
    read(data.draw(mutated_bytes(blob, max_mutations=3)))


@given(st.binary(max_size=200))
def test_envelope_of_random_bytes(blob: bytes) -> None:
    outcome(open_envelope, {crypto.key_id(ADMIN_PUB): ADMIN_PUB}, blob, "catalog", "catalog",
            "catalog")


# --- the inner parsers, past a valid signature -----------------------------------------------

@given(mutated_json(doc(CONFIG.to_bytes())))
@example(b'{"version": ' + b"1" * 5000 + b"}")  # ValueError: too many digits for int()
@example(b"[" * 3000)  # RecursionError
@example(b'{"admin_key": "\\u00e9"}')  # ValueError: non-ASCII base64
def test_config_body(body: bytes) -> None:
    read_config(signed(ADMIN, "config", "config", body))


@given(mutated_json(doc(CATALOG.to_bytes())))
def test_catalog_body(body: bytes) -> None:
    read_catalog(signed(ADMIN, "catalog", "catalog", body))


@given(mutated_json(doc(POINTER.to_bytes())))
def test_pointer_body(body: bytes) -> None:
    read_pointer(signed(DEVICE, "pointer", "vm1/latest", body))


@given(mutated_json(doc(WRAPPED.to_bytes())))
def test_wrapped_key_body(body: bytes) -> None:
    read_wrapped(signed(DEVICE, "wrapped-key", WRAPPED.object_id, body))


@given(mutated_json(doc(IMAGE.to_bytes())), st.sampled_from([None, 3]))
def test_image_manifest_body(body: bytes, level: int | None) -> None:
    read_image_manifest(sealed_manifest(encode_payload(body, level)))


@given(mutated_json(doc(SNAPSHOT.to_bytes())), st.sampled_from([None, 3]))
def test_snapshot_manifest_body(body: bytes, level: int | None) -> None:
    read_snapshot(signed_snapshot(encode_payload(body, level)))


@given(st.one_of(mutated_bytes(encode_payload(SNAPSHOT.to_bytes(), 3)),
                 mutated_bytes(encode_payload(b"x" * 1000, 3)), st.binary(max_size=64)))
@example(b"\x01\x28\xb5\x2f\xfd\xe0" + b"1" * 16)  # declares 3.5e18 bytes: MemoryError
def test_payload_codec(payload: bytes) -> None:
    outcome(decode_payload, payload, "manifest", "m", "p", limit=4096)


# --- chunk stores: indexes, pack trailers and headers ----------------------------------------

def chunk_store(objects: dict[str, bytes]) -> ChunkStore:
    s = MemoryStore()
    s.objects.update(objects)
    return ChunkStore(s, "images/win/store", KEYS)


def read_index(body: bytes) -> object:
    sealed = crypto.seal(KEYS.enc, "index", INDEX.name, encode_payload(body, None))
    return outcome(run, chunk_store({layout.index("images/win/store", INDEX.name): sealed})
                   .load_index())


@given(mutated_json(doc(INDEX.to_bytes())))
def test_index_body(body: bytes) -> None:
    read_index(body)


def _pack() -> tuple[str, bytes]:
    b = PackBuilder(KEYS, name="cd" * 32)
    b.add(b"\x11" * 32, b"hello" * 100)
    b.add(b"\x22" * 32, bytes(300))
    data, _records = b.finish()
    return b.name, data


PACK_NAME, PACK = _pack()


@given(mutated_bytes(PACK, max_mutations=2))
@example(PACK[:3])  # shorter than its trailer
def test_pack_read_by_its_header(pack: bytes) -> None:
    outcome(run, chunk_store({layout.pack("images/win/store", PACK_NAME): pack}).load_index())


@given(st.binary(max_size=8), st.integers(0, 1 << 40))
@example(b"\x00\x01", 100)  # a short read of the trailer: struct.error
def test_pack_trailer(trailer: bytes, size: int) -> None:
    outcome(header_length, trailer, PACK_NAME, "p", size)


HEADER = pack_header_bytes([(b"\x11" * 32, 0, 100, 64), (b"\x22" * 32, 100, 50, 10)])


@given(mutated_bytes(HEADER))
def test_pack_header_past_the_seal(plain: bytes) -> None:
    sealed = crypto.seal(KEYS.enc, "pack-header", PACK_NAME, plain)
    outcome(open_header, KEYS, PACK_NAME, sealed, "p", 150 + len(sealed) + 4)


# --- lock files (plain JSON any client may write) --------------------------------------------

@given(mutated_json(json.loads(lock_document("laptop-1", 100, "ab12"))))
@example(b'{"holder": "x", "created": 1e999}')  # OverflowError
@example(b"[" * 3000)  # RecursionError
def test_lock_document(untrusted: bytes) -> None:
    info = read_lock(untrusted)
    assert info is None or (isinstance(info.holder, str) and isinstance(info.created, int))
