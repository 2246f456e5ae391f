"""The chunk cache's periodic writeback does not stop the download's other workers."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from vmclient.provision import cache as cache_module
from vmclient.provision.cache import ChunkCache
from vmclient.store.objects import BlobRef

WRITEBACK = 256 << 10  # (the cache's is 64 MiB)


def blob(n: int, size: int) -> tuple[bytes, BlobRef, bytes]:
    return bytes([n]) * 32, BlobRef("pack", 0, size, size), bytes([n]) * size


def test_a_worker_appends_while_another_one_waits_for_the_writeback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ChunkCache(tmp_path, "office")
    syncing, appended = threading.Event(), threading.Event()
    synced: list[int] = []

    def fdatasync(fd: int) -> None:  # the disk is slow: it ends once the other worker appended
        syncing.set()
        appended.wait(10)
        synced.append(fd)

    monkeypatch.setattr(cache_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(cache_module, "WRITEBACK", WRITEBACK)
    first = threading.Thread(target=cache.keep, args=([blob(1, WRITEBACK)],))
    first.start()
    try:
        assert syncing.wait(10), "the first worker's append never reached WRITEBACK"
        second = threading.Thread(target=lambda: (cache.keep([blob(2, 4096)]), appended.set()))
        second.start()
        second.join(5)
        assert not second.is_alive(), "an append waited for another worker's fdatasync"
    finally:
        appended.set()
        first.join(10)
    assert synced, "the segment was not written back"
    cache.sync()
    cache.close()
    reopened = ChunkCache(tmp_path, "office")
    assert reopened.ids() == {bytes([1]) * 32, bytes([2]) * 32}
    assert reopened.get(bytes([2]) * 32) == (4096, bytes([2]) * 4096)
    assert os.path.getsize(next((tmp_path / "cache/office").glob("*.seg"))) > WRITEBACK
    reopened.close()
