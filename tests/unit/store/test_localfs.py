"""The local-directory transport: atomic puts, ranges, listing, locks."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.store.errors import LocalSyncError, LockHeld, ObjectNotFound
from vmclient.store.localfs import LocalDirStore
from vmclient.store.remote import MemoryStore, RemoteStore

from .helpers import run


@pytest.fixture(params=["memory", "localfs"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteStore:
    now = [1000]
    def clock():
        return now[0]
    s: RemoteStore = MemoryStore(clock) if request.param == "memory" else \
        LocalDirStore(tmp_path, clock)
    s.now = now  # type: ignore[attr-defined]
    return s


def test_put_get_range_list_delete(remote: RemoteStore) -> None:
    run(remote.put_atomic("a/b/c", b"0123456789"))
    assert run(remote.get("a/b/c")) == b"0123456789"
    assert run(remote.get("a/b/c", 3, 4)) == b"3456"
    assert [(e.path, e.size) for e in run(remote.list("a"))] == [("a/b/c", 10)]
    run(remote.put_atomic("a/b/c", b"new"))
    assert run(remote.get("a/b/c")) == b"new"
    run(remote.delete("a/b/c"))
    run(remote.delete("a/b/c"))
    with pytest.raises(ObjectNotFound):
        run(remote.get("a/b/c"))


def test_exclusive_put_does_not_replace(remote: RemoteStore) -> None:
    run(remote.put_atomic("x", b"1", exclusive=True))
    with pytest.raises(LocalSyncError, match="exists"):
        run(remote.put_atomic("x", b"2", exclusive=True))
    assert run(remote.get("x")) == b"1"


@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", ".tmp-x", "a/.hidden"])
def test_unsafe_paths_are_refused(remote: RemoteStore, path: str) -> None:
    with pytest.raises(LocalSyncError, match="invalid repository path"):
        run(remote.put_atomic(path, b""))


def test_lock_is_exclusive_until_released_or_stale(remote: RemoteStore) -> None:
    token = run(remote.lock("devices/d1/lock", "laptop-1", stale_after=60))
    with pytest.raises(LockHeld, match="held by laptop-1"):
        run(remote.lock("devices/d1/lock", "admin", stale_after=60))
    run(remote.unlock(token))
    token2 = run(remote.lock("devices/d1/lock", "admin", stale_after=60))
    remote.now[0] += 61  # type: ignore[attr-defined]
    token3 = run(remote.lock("devices/d1/lock", "laptop-1", stale_after=60))
    run(remote.unlock(token2))  # no longer ours: must not release the new holder's lock
    with pytest.raises(LockHeld):
        run(remote.lock("devices/d1/lock", "admin", stale_after=60))
    run(remote.unlock(token3))


def test_localfs_leaves_no_temporaries_and_hides_them(tmp_path: Path) -> None:
    s = LocalDirStore(tmp_path)
    run(s.put_atomic("d/obj", b"data"))
    (tmp_path / "d" / ".tmp-crashed").write_bytes(b"half")
    assert [e.path for e in run(s.list("d"))] == ["d/obj"]
    assert run(s.sweep_temporaries("d", older_than=None)) == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["obj"]
    assert (tmp_path / "d" / "obj").stat().st_mode & 0o777 == 0o600
