"""Fixed-size chunking, zero detection, dirty-extent mapping."""

from __future__ import annotations

import os

import pytest

from vmclient.store import crypto
from vmclient.store.chunker import (
    Chunker,
    check_chunk_size,
    chunk_span,
    dirty_chunks,
)
from vmclient.store.errors import LocalSyncError
from vmclient.store.objects import ZERO_ID

K = 64 << 10


def test_split_names_chunks_and_skips_zeros(keys: crypto.KeySet) -> None:
    data = os.urandom(K) + bytes(K) + b"tail"
    chunks = list(Chunker(keys.chunk_id).split(data, first_index=10))
    assert [c.index for c in chunks] == [10, 11, 12]
    assert chunks[1].is_zero and chunks[1].data == b""
    assert chunks[0].id == crypto.chunk_id(keys.chunk_id, data[:K])
    assert chunks[2].data == b"tail" and not chunks[2].is_zero


def test_short_zero_chunk_is_zero(keys: crypto.KeySet) -> None:
    assert Chunker(keys.chunk_id).chunk(0, bytes(512)).id == ZERO_ID


@pytest.mark.parametrize("size", [4096, 96 << 10, 2 << 20])
def test_chunk_size_outside_policy_is_refused(size: int) -> None:
    with pytest.raises(LocalSyncError, match="power of two"):
        check_chunk_size(size)


def test_bitmap_granularity_must_divide_the_chunk_size() -> None:
    assert check_chunk_size(256 << 10, 64 << 10) == 256 << 10
    with pytest.raises(LocalSyncError, match="does not divide"):
        check_chunk_size(K, 128 << 10)


def test_dirty_extents_map_to_chunk_indices() -> None:
    size = 10 * K + 100
    assert dirty_chunks([(0, 1), (K - 1, 2), (5 * K, K), (10 * K, 100)], K, size) == \
        [0, 1, 5, 10]
    with pytest.raises(LocalSyncError, match="outside"):
        dirty_chunks([(size, 1)], K, size)


def test_chunk_span_of_last_chunk_is_short() -> None:
    assert chunk_span(10, K, 10 * K + 100) == (10 * K, 100)
    with pytest.raises(LocalSyncError):
        chunk_span(11, K, 10 * K + 100)
