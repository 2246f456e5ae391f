"""The local-directory transport: atomic puts, ranges, listing, locks."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from vmclient.store.errors import LocalSyncError, LockHeld, ObjectNotFound
from vmclient.store.locks import Whoami, lock_document
from vmclient.store.remote import (
    LockToken,
    MemoryStore,
    RemoteStore,
    temporaries_of,
    temporary_name,
)
from vmclient.transport.localfs import LocalDirStore


@pytest.fixture(params=["memory", "localfs"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> RemoteStore:
    now = [1000]
    def clock():
        return now[0]
    s: RemoteStore = MemoryStore(clock) if request.param == "memory" else \
        LocalDirStore(tmp_path, clock)
    s.now = now  # type: ignore[attr-defined]
    return s


@pytest.mark.asyncio
async def test_put_get_range_list_delete(remote: RemoteStore) -> None:
    await remote.put_atomic("a/b/c", b"0123456789")
    assert await remote.get("a/b/c") == b"0123456789"
    assert await remote.get("a/b/c", 3, 4) == b"3456"
    assert [(e.path, e.size) for e in await remote.list("a")] == [("a/b/c", 10)]
    await remote.put_atomic("a/b/c", b"new")
    assert await remote.get("a/b/c") == b"new"
    await remote.delete("a/b/c")
    await remote.delete("a/b/c")
    with pytest.raises(ObjectNotFound):
        await remote.get("a/b/c")


@pytest.mark.asyncio
async def test_exclusive_put_does_not_replace(remote: RemoteStore) -> None:
    await remote.put_atomic("x", b"1", exclusive=True)
    with pytest.raises(LocalSyncError, match="exists"):
        await remote.put_atomic("x", b"2", exclusive=True)
    assert await remote.get("x") == b"1"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["", "/abs", "a/../b", "a//b", ".tmp-x", "a/.hidden"])
async def test_unsafe_paths_are_refused(remote: RemoteStore, path: str) -> None:
    with pytest.raises(LocalSyncError, match="invalid repository path"):
        await remote.put_atomic(path, b"")


@pytest.mark.asyncio
async def test_lock_is_exclusive_until_released_or_stale(remote: RemoteStore) -> None:
    token = await remote.lock("devices/d1/lock", "laptop-1", stale_after=60)
    with pytest.raises(LockHeld, match="held by laptop-1"):
        await remote.lock("devices/d1/lock", "admin", stale_after=60)
    await remote.unlock(token)
    token2 = await remote.lock("devices/d1/lock", "admin", stale_after=60)
    remote.now[0] += 61  # type: ignore[attr-defined]
    token3 = await remote.lock("devices/d1/lock", "laptop-1", stale_after=60)
    await remote.unlock(token2)  # no longer ours: must not release the new holder's lock
    with pytest.raises(LockHeld):
        await remote.lock("devices/d1/lock", "admin", stale_after=60)
    await remote.unlock(token3)


@pytest.mark.asyncio
async def test_localfs_leaves_no_temporaries_and_hides_them(tmp_path: Path) -> None:
    s = LocalDirStore(tmp_path)
    await s.put_atomic("d/obj", b"data")
    (tmp_path / "d" / ".tmp-crashed").write_bytes(b"half")
    assert [e.path for e in await s.list("d")] == ["d/obj"]
    assert await s.sweep_temporaries("d", older_than=None) == 1
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["obj"]
    assert (tmp_path / "d" / "obj").stat().st_mode & 0o777 == 0o600


@pytest.mark.asyncio
async def test_taking_a_lock_removes_the_lock_temporaries_only(tmp_path: Path) -> None:
    """A run killed while writing a lock left its temporary beside the lock; whoever takes
    the lock next removes it, and nothing else in that directory (the admin's ``device``
    record and an order are written there too)."""
    s = LocalDirStore(tmp_path)
    d = tmp_path / "devices" / "d1"
    await s.put_atomic("devices/d1/device", b"record")
    names = [".tmp-lock-0123456789abcdef", ".tmp-lock-fedcba9876543210",
             ".tmp-device-0123456789abcdef", ".tmp-lockless-0123456789abcdef"]
    for name in names:
        (d / name).write_bytes(b"half")
    (d / "vms").mkdir()
    (d / "vms" / ".tmp-lock-0123456789abcdef").write_bytes(b"not beside the lock")
    token = await s.lock("devices/d1/lock", "laptop-1")
    assert sorted(p.name for p in d.glob(".tmp-*")) == names[2:]
    assert (d / "vms" / ".tmp-lock-0123456789abcdef").exists()
    await s.unlock(token)
    assert sorted(p.name for p in d.iterdir()) == [*sorted(names[2:]), "device", "lock.gone",
                                                   "vms"]


@pytest.mark.asyncio
async def test_temporaries_are_named_after_their_object(tmp_path: Path) -> None:
    assert re.fullmatch(r"\.tmp-lock-[0-9a-f]{16}", temporary_name("devices/d1/lock"))
    assert temporaries_of("devices/d1/lock") == ".tmp-lock-"
    with pytest.raises(LocalSyncError, match="not a prefix of temporary"):
        await LocalDirStore(tmp_path).sweep_temporaries("a", names="lock")


@pytest.mark.asyncio
async def test_a_lock_attempt_whose_temporary_the_holder_swept_finds_the_lock_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two clients: the holder's sweep removes the temporary of another client's attempt
    in flight (written, not yet linked); that attempt reports the lock held (it retries),
    not a raw file error."""
    a, b = LocalDirStore(tmp_path), LocalDirStore(tmp_path)
    taken: list[LockToken] = []
    real_link = os.link

    def link(src: str, dst: str) -> None:
        if not busy and Path(dst).name == "lock":  # b's attempt, between write and link:
            busy.append(src)
            taken.append(asyncio.run(a.lock("devices/d1/lock", "laptop-1")))  # a takes it
        real_link(src, dst)

    busy: list[str] = []

    monkeypatch.setattr(os, "link", link)
    with pytest.raises(LockHeld, match="held by laptop-1"):
        await b.lock("devices/d1/lock", "admin")
    assert taken and not list((tmp_path / "devices" / "d1").glob(".tmp-*"))
    await a.unlock(taken[0])


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "localfs"])
async def test_taking_a_lock_removes_locks_a_killed_client_had_set_aside(tmp_path: Path,
                                                                         kind: str) -> None:
    """A client killed inside a compare-and-delete (unlocking, or breaking a stale lock)
    left the lock set aside in ``lock.gone/``: the next holder removes it, whatever it
    holds, except its own lock (set aside by a client racing it, which puts it back)."""
    s: MemoryStore | LocalDirStore = MemoryStore() if kind == "memory" else \
        LocalDirStore(tmp_path)
    await s.put_atomic("devices/d1/lock.gone/0123456789abcdef",
                       lock_document("killed", 0, "dead", me=Whoami("h", "m", "b", 1)))
    await s.put_atomic("devices/d1/lock.gone/fedcba9876543210", b"not a lock")
    token = await s.lock("devices/d1/lock", "laptop-1")
    assert [e.path for e in await s.list("devices/d1")] == ["devices/d1/lock"]
    await s.rename("devices/d1/lock", "devices/d1/lock.gone/00000000000000aa")  # a racer's
    await s.put_atomic("devices/d1/lock.gone/00000000000000bb", b"{}")
    assert await s.clear_lock_leftovers("devices/d1/lock", token.nonce) == 1
    assert [e.path for e in await s.list("devices/d1")] == [
        "devices/d1/lock.gone/00000000000000aa"]


@pytest.mark.asyncio
async def test_a_compare_and_delete_whose_set_aside_lock_vanished_gives_up(tmp_path: Path) -> None:
    """The next holder removed the lock this client had just set aside: no error, nothing
    deleted by this client (its lock attempt then retries and finds the lock held)."""

    class Racing(LocalDirStore):
        async def rename(self, path: str, new: str) -> None:
            await super().rename(path, new)
            if ".gone/" in new:
                await self.delete(new)  # another holder's clear_lock_leftovers, right then

    s = Racing(tmp_path)
    await s.put_atomic("d/lock", b"x")
    assert await s.compare_and_delete("d/lock", b"x".__eq__) is False
