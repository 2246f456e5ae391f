"""Sizes from the server are bounded (issue 13 §2.6): a whole-object read takes at most the
cap of its object type, and a zstd frame's declared size is checked before anything is
allocated for it.  Allocation is measured with tracemalloc."""

from __future__ import annotations

import inspect
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmclient.store import crypto, layout, repo
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import MAX_DOCUMENT, decode_payload, signed_envelope
from vmclient.store.orders import Order
from vmclient.transport.localfs import LocalDirStore

MiB = 1 << 20


async def peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """(what ``fn`` raised, or the coroutine it returned, the most bytes Python had
    allocated meanwhile)."""
    tracemalloc.start()
    try:
        result = fn()
        if inspect.isawaitable(result):
            await result
        raise AssertionError("not refused")
    except RemoteIntegrityError as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def sparse(path: Path, size: int, head: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: no disk used


@pytest.mark.asyncio
async def test_an_oversize_order_is_refused_without_being_read(
        tmp_path: Path, admin: Ed25519PrivateKey, device_id: str) -> None:
    store = LocalDirStore(tmp_path / "repo")
    path = layout.order(device_id, 1)
    real = signed_envelope(admin, "order", f"{device_id}/1",
                           Order(device_id, 1, 0, "lock").to_bytes())
    sparse(tmp_path / "repo" / path, 256 * MiB, real)  # a genuine order, padded by the server
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}
    exc, most = await peak(lambda: repo.get_signed(store, path, signers, "order",
                                                   f"{device_id}/1"))
    assert exc.obj_type == "order" and exc.path == path, exc
    assert "larger than the 4194304 bytes" in str(exc)
    assert most < 5 * MiB + (1 << 16), most  # the cap and a byte, never the 256 MiB


@pytest.mark.asyncio
async def test_a_small_object_read_allocates_its_size_not_the_cap(tmp_path: Path) -> None:
    store = LocalDirStore(tmp_path / "repo")
    await store.put_atomic("devices/d/x", b"tiny")
    tracemalloc.start()
    try:
        assert await store.get("devices/d/x", 0, 64 * MiB) == b"tiny"
        most = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert most < MiB, most


@pytest.mark.asyncio
async def test_a_zstd_frame_declaring_a_huge_size_is_refused_before_allocating() -> None:
    c = zstandard.ZstdCompressor(write_content_size=True).compressobj(size=512 * MiB)
    frame = c.compress(bytes(1 << 16)) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert zstandard.frame_content_size(frame) == 512 * MiB  # 23 bytes that claim 512 MiB
    payload = b"\x01" + frame
    exc, most = await peak(lambda: decode_payload(payload, "manifest", "m1", "vms/x/manifest"))
    assert exc.obj_type == "manifest" and exc.obj_id == "m1"
    assert f"declares {512 * MiB} bytes, more than the {MAX_DOCUMENT}" in str(exc)
    assert most < MiB, most
    # a chunk's limit is its indexed plain length: a frame declaring more is refused too
    small = zstandard.ZstdCompressor(write_content_size=True).compress(os.urandom(4096))
    with pytest.raises(RemoteIntegrityError, match="declares 4096 bytes, more than the 4000"):
        decode_payload(b"\x01" + small, "chunk", "c", "p", limit=4000)
    assert len(decode_payload(b"\x01" + small, "chunk", "c", "p", limit=4096)) == 4096


@pytest.mark.asyncio
async def test_a_frame_without_a_declared_size_is_bounded_by_the_limit() -> None:
    c = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    frame = c.compress(bytes(8 * MiB)) + c.flush()
    assert zstandard.frame_content_size(frame) == -1
    exc, most = await peak(lambda: decode_payload(b"\x01" + frame, "index", "i", "p", limit=MiB))
    assert exc.obj_type == "index" and most < 4 * MiB, most
