"""Manifests, chunk maps, indexes and pack headers: round trips and strict parsing."""

from __future__ import annotations

import json

import pytest

from vmclient.store.errors import RemoteIntegrityError, UnsupportedVersion
from vmclient.store.format import b64
from vmclient.store.objects import (
    BASE_ID,
    ZERO_ID,
    ChunkMap,
    Index,
    Manifest,
    pack_header_bytes,
    parse_pack_header,
)

A, B = b"\xaa" * 32, b"\xbb" * 32


def snapshot() -> Manifest:
    disk = ChunkMap("system", "system", 3 * 65536 + 512, 65536, (A, ZERO_ID, BASE_ID, B),
                    base="win11/3")
    user = ChunkMap("user", "user", 65536, 65536, (A,))
    return Manifest("snapshot", "office", "0000000007", 7, 1764150000, "c" * 32,
                    (disk, user), device="d" * 32, parent="0000000006", meta={"memory": "no"})


def test_manifest_round_trips_and_lists_stored_ids() -> None:
    m = snapshot()
    again = Manifest.parse(m.to_bytes(), "snapshot", "office", "0000000007", "p")
    assert again == m
    assert m.stored_ids() == {A, B}


@pytest.mark.parametrize(("kind", "subject", "label"), [
    ("image", "office", "0000000007"),
    ("snapshot", "other-vm", "0000000007"),
    ("snapshot", "office", "0000000006"),
])
def test_manifest_stored_under_another_name_is_refused(kind: str, subject: str,
                                                      label: str) -> None:
    with pytest.raises(RemoteIntegrityError, match="expected"):
        Manifest.parse(snapshot().to_bytes(), kind, subject, label, "p")


def mutate(field: str, value: object) -> bytes:
    doc = json.loads(snapshot().to_bytes())
    target = doc["disks"][0] if field.startswith("disks.") else doc
    target[field.removeprefix("disks.")] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("seq", -1, "'seq': -1 is out of range"),
    ("seq", "7", "'seq': must be a whole number"),
    ("device", "", "'device': a snapshot names the device"),
    ("extra", 1, "'extra': unknown field"),
    ("disks.role", "swap", "'disks[0].role': 'swap' is not one of"),
    ("disks.size", 65536, "'disks[0].chunks': 4 ids for a 65536-byte disk"),
    ("disks.chunks", b64(A * 3 + b"x"), "'disks[0].chunks': length 97"),
    ("disks.base", "", "'disks[0].base': empty, but chunks refer to a base image"),
    ("disks.name", "../etc", "'disks[0].name': '../etc' does not match"),
])
def test_manifest_field_errors_name_the_field(field: str, value: object, problem: str) -> None:
    with pytest.raises(RemoteIntegrityError) as err:
        Manifest.parse(mutate(field, value), "snapshot", "office", "0000000007", "v/p")
    assert problem in str(err.value)
    assert err.value.obj_id == "snapshot:office/0000000007" and err.value.path == "v/p"


def test_manifest_unknown_version_is_refused() -> None:
    with pytest.raises(UnsupportedVersion):
        Manifest.parse(mutate("version", 2), "snapshot", "office", "0000000007", "p")


def test_manifest_duplicate_disk_names_are_refused() -> None:
    doc = json.loads(snapshot().to_bytes())
    doc["disks"][1]["name"] = "system"
    with pytest.raises(RemoteIntegrityError, match="duplicate disk name"):
        Manifest.parse(json.dumps(doc).encode(), "snapshot", "office", "0000000007", "p")


def test_chunk_map_must_cover_the_disk() -> None:
    with pytest.raises(ValueError, match="2 chunk ids for 1 chunks"):
        ChunkMap("d", "user", 100, 65536, (A, B))


def test_index_round_trips() -> None:
    idx = Index("1" * 64, {"f" * 64: ((A, 0, 100, 65536), (B, 100, 50, 65536))})
    again = Index.parse(idx.to_bytes(), "1" * 64, "p")
    assert again == idx
    assert {cid: ref.offset for cid, ref in again.refs()} == {A: 0, B: 100}


def test_index_with_bad_pack_name_is_refused() -> None:
    body = Index("i", {"not-hex": ()}).to_bytes()
    with pytest.raises(RemoteIntegrityError, match=r"'packs\[0\].name'"):
        Index.parse(body, "i", "p")


def test_pack_header_must_be_contiguous_and_versioned() -> None:
    good = pack_header_bytes([(A, 0, 100, 1), (B, 100, 5, 1)])
    assert len(parse_pack_header(good, "pk", "p")) == 2
    with pytest.raises(RemoteIntegrityError, match="expected 100"):
        parse_pack_header(pack_header_bytes([(A, 0, 100, 1), (B, 99, 5, 1)]), "pk", "p")
    with pytest.raises(UnsupportedVersion):
        parse_pack_header(b"\x02" + good[1:], "pk", "p")
