"""Upload, download and prune planning."""

from __future__ import annotations

import pytest

from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.objects import BASE_ID, ZERO_ID, BlobRef, ChunkMap, Manifest
from vmclient.store.plan import plan_download, plan_prune, plan_upload

K = 64 << 10


def cid(n: int) -> bytes:
    return n.to_bytes(32, "big")


def image(ids: list[bytes], label: str = "1") -> Manifest:
    disk = ChunkMap("system", "system", len(ids) * K, K, tuple(ids), base="")
    return Manifest("image", "win", label, int(label), 0, "c", (disk,))


def test_upload_skips_zero_base_known_and_repeated_chunks() -> None:
    ids = [cid(1), ZERO_ID, cid(2), BASE_ID, cid(1), cid(3)]
    assert plan_upload(ids, {cid(2)}) == [cid(1), cid(3)]


def test_download_fetches_only_what_is_not_local_and_coalesces_reads() -> None:
    m = image([cid(1), cid(2), cid(3), ZERO_ID, cid(4)])
    remote = {cid(1): BlobRef("p1", 0, 100, K), cid(2): BlobRef("p1", 100, 100, K),
              cid(3): BlobRef("p1", 10_000_000, 100, K), cid(4): BlobRef("p2", 0, 50, K)}
    plan = plan_download(m, {cid(2)}, remote, max_gap=1000)
    assert plan.local == {cid(2)} and plan.missing_local == 3
    reads = [(r.pack, r.offset, r.length, [c for c, _ in r.blobs]) for r in plan.reads]
    assert reads == [("p1", 0, 100, [cid(1)]), ("p1", 10_000_000, 100, [cid(3)]),
                     ("p2", 0, 50, [cid(4)])]
    both = plan_download(m, set(), remote, max_gap=1000)
    assert (both.reads[0].offset, both.reads[0].length) == (0, 200)
    assert both.download_bytes == 350


def test_download_of_an_upgrade_reads_only_changed_chunks() -> None:
    old = image([cid(i) for i in range(100)])
    new = image([cid(i) for i in range(98)] + [cid(1000), cid(1001)], "2")
    remote = {cid(i): BlobRef("p", i * 10, 10, K) for i in [*range(100), 1000, 1001]}
    plan = plan_download(new, old.stored_ids(), remote)
    assert plan.missing_local == 2


def test_chunk_missing_from_every_index_is_named() -> None:
    with pytest.raises(RemoteIntegrityError) as err:
        plan_download(image([cid(7)]), set(), {}, store_path="images/win/store")
    assert err.value.obj_id == cid(7).hex() and "image:win/1" in str(err.value)


def test_prune_never_deletes_a_pack_a_kept_manifest_needs() -> None:
    kept = [image([cid(1), cid(2)])]
    packs = {"a": [(cid(1), BlobRef("a", 0, 10, K)), (cid(9), BlobRef("a", 10, 90, K))],
             "b": [(cid(8), BlobRef("b", 0, 10, K))],
             "c": [(cid(2), BlobRef("c", 0, 10, K)), (cid(7), BlobRef("c", 10, 1, K))]}
    plan = plan_prune(kept, packs)
    assert plan.delete_packs == ("b",)
    assert plan.repack == ("a",)
    assert plan.unused_bytes == 101
