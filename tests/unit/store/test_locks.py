"""Repository locks: compare-and-delete, boot id and dead processes, refresh, unlock on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from vmclient.errors import UsageError
from vmclient.store.errors import LocalSyncError, LockHeld, ObjectNotFound
from vmclient.store.holding import keep_fresh, unlock_anyway
from vmclient.store.locks import LockInfo, Whoami, lock_document, read_lock, stale_reason
from vmclient.store.remote import MemoryStore
from vmclient.transport.localfs import LocalDirStore

LOCK = "devices/d1/lock"
ME = Whoami("laptop-1", "m" * 32, "boot-now", 4242)


def _stores(kind: str, tmp_path: Path, clock: list[int]) -> tuple[MemoryStore | LocalDirStore,
                                                                  MemoryStore | LocalDirStore]:
    """Two clients of one repository."""
    if kind == "memory":
        a, b = MemoryStore(lambda: clock[0]), MemoryStore(lambda: clock[0])
        b.objects = a.objects
        return a, b
    return LocalDirStore(tmp_path, lambda: clock[0]), LocalDirStore(tmp_path, lambda: clock[0])


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "localfs"])
async def test_two_clients_breaking_one_stale_lock_do_not_both_win(kind: str,
                                                                   tmp_path: Path) -> None:
    """B judged the lock stale, then A broke it and took a fresh one: B must not delete A's."""
    clock = [10_000]
    a, b = _stores(kind, tmp_path, clock)
    stale = json.dumps({"holder": "crashed", "created": 0, "nonce": "00"}).encode()
    await a.put_atomic(LOCK, stale)
    a_locked = asyncio.Event()
    b_read = asyncio.Event()
    real_get = b.get

    async def slow_get(path: str, offset: int = 0, length: int | None = None) -> bytes:
        data = await real_get(path, offset, length)
        if path == LOCK and not b_read.is_set():  # B has read the stale lock ...
            b_read.set()
            await a_locked.wait()  # ... and is slow to act on it
        return data

    b.get = slow_get  # type: ignore[method-assign]

    async def race() -> tuple[object, object]:
        async def client_a() -> object:
            await b_read.wait()
            token = await a.lock(LOCK, "client A", stale_after=60)
            a_locked.set()
            return token

        async def client_b() -> object:
            try:
                return await b.lock(LOCK, "client B", stale_after=60)
            except LockHeld as exc:
                return exc

        return await asyncio.gather(client_a(), client_b())

    token_a, outcome_b = await race()
    assert isinstance(outcome_b, LockHeld), "both clients hold the lock"
    assert "client A" in str(outcome_b)
    info = read_lock(await a.get(LOCK))
    assert info is not None and info.nonce == token_a.nonce  # type: ignore[attr-defined]
    if kind == "localfs":  # nothing set aside is left behind
        d = tmp_path / "devices" / "d1"
        assert sorted(p.name for p in d.iterdir()) == ["lock", "lock.gone"]
        assert list((d / "lock.gone").iterdir()) == []


def _info(**kw: object) -> LockInfo:
    base: dict[str, object] = {"holder": "h", "created": 1000, "refreshed": 1000, "nonce": "n",
                               "host": ME.host, "machine": ME.machine, "boot": ME.boot,
                               "pid": 99}
    base.update(kw)
    return LockInfo(**base)  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    return pid == 99


@pytest.mark.parametrize(("info", "reason"), [
    (_info(), None),  # a live process of this boot
    (_info(pid=98), "process 98 is gone"),
    (_info(boot="boot-before"), "before this host rebooted"),  # pid 99 reused since
    (_info(boot="boot-before", host="other"), None),  # another host: age only
    (_info(boot="boot-before", machine="x" * 32), None),  # same name, other machine
    (_info(boot=""), None),  # an old-format lock: age only
    (_info(pid=ME.pid, nonce="held"), None),  # this process holds it
    (_info(pid=ME.pid, nonce="lost"), "no longer holds it"),  # its unlock was lost
    (_info(created=0, refreshed=200), "not refreshed for 1000 s"),
    (None, "not a lock document"),
])
def test_stale_reason(info: LockInfo | None, reason: str | None) -> None:
    got = stale_reason(info, 1200, 1000, ME, {"held"}, alive)
    assert got == reason if reason is None else (got is not None and reason in got), got


@pytest.mark.asyncio
async def test_a_lock_from_an_earlier_boot_is_broken_at_once_whatever_its_pid(
        tmp_path: Path) -> None:
    """The pid in the lock is alive now (this very test's parent), but it is another boot's."""
    me = Whoami.current()
    if not me.boot or not me.machine:
        pytest.skip("no boot id or machine id on this host")
    store = LocalDirStore(tmp_path)
    before = Whoami(me.host, me.machine, "an-earlier-boot", os.getppid())
    store_doc = lock_document("laptop vmclient-sync pid 1", int(time.time()), "aa", me=before)
    await store.put_atomic(LOCK, store_doc)
    token = await store.lock(LOCK, "after reboot")
    assert read_lock(await store.get(LOCK)).nonce == token.nonce  # type: ignore[union-attr]
    await store.unlock(token)
    with pytest.raises(ObjectNotFound):
        await store.get(LOCK)
    # the same lock from this boot, its process alive: held
    await store.put_atomic(LOCK, lock_document("x", int(time.time()), "bb", me=Whoami(
        me.host, me.machine, me.boot, os.getppid())))
    with pytest.raises(LockHeld):
        await store.lock(LOCK, "same boot")


@pytest.mark.asyncio
async def test_a_long_run_refreshes_its_lock_so_it_never_looks_stale() -> None:
    clock = [0]
    store = MemoryStore(lambda: clock[0])

    token = await store.lock(LOCK, "long sync")
    fresh = asyncio.create_task(keep_fresh(store, token, every=0.01))
    clock[0] = 1500
    await asyncio.sleep(0.1)  # refreshed at 1500 (or later)
    clock[0] = 2500  # 2500 s after it was taken, 1000 s after the refresh
    other = MemoryStore(lambda: clock[0])
    other.objects = store.objects
    with pytest.raises(LockHeld, match="long sync"):
        await other.lock(LOCK, "other", stale_after=1800)
    fresh.cancel()
    info = read_lock(store.objects[LOCK])
    assert info is not None and info.created == 0 and info.refreshed >= 1500
    await store.unlock(token)
    assert LOCK not in store.objects


@pytest.mark.asyncio
async def test_refresh_does_not_take_back_a_lock_broken_meanwhile() -> None:
    store = MemoryStore()

    token = await store.lock(LOCK, "slow")
    store.objects[LOCK] = lock_document("other", 0, "ff")
    assert not await store.refresh(token)
    assert read_lock(store.objects[LOCK]).nonce == "ff"  # type: ignore[union-attr]
    await store.unlock(token)  # not ours: left alone
    assert read_lock(store.objects[LOCK]).nonce == "ff"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_a_cancelled_run_still_releases_its_lock(tmp_path: Path) -> None:
    """Ctrl-C under asyncio.run cancels the main task while it is in blocking code (the
    qcow2 conversion); the cancellation lands at the first await of its ``finally``."""
    store = LocalDirStore(tmp_path)

    async def publish_like() -> None:
        token = await store.lock(LOCK, "publish")
        try:
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # SIGINT arrives
            raise UsageError("qemu-img convert failed: interrupted")
        finally:
            await unlock_anyway(store, token)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(publish_like())
    assert not (tmp_path / LOCK).exists()


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "localfs"])
async def test_rename_moves_only_to_a_free_name(kind: str, tmp_path: Path) -> None:
    s, _ = _stores(kind, tmp_path, [0])
    await s.put_atomic("a/x", b"1")
    await s.put_atomic("a/y", b"2")
    with pytest.raises(LocalSyncError, match="exists"):
        await s.rename("a/x", "a/y")
    await s.rename("a/x", "a/z")
    assert await s.get("a/z") == b"1"
    with pytest.raises(ObjectNotFound):
        await s.rename("a/x", "a/w")


@pytest.mark.asyncio
async def test_the_sync_engine_keeps_its_device_lock_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmclient.store import holding
    from vmclient.sync.lock import device_lock
    monkeypatch.setattr(holding, "REFRESH_EVERY", 0.01)
    clock = [0]
    store = MemoryStore(lambda: clock[0])

    async with device_lock(store, "d1", "office"):
        clock[0] = 700
        await asyncio.sleep(0.1)
        info = read_lock(store.objects[LOCK])
        assert info is not None and info.refreshed == 700 and info.created == 0
    assert LOCK not in store.objects
    clock[0] = 1400
    await asyncio.sleep(0.05)  # the refresher stopped: nothing rewrote the lock
    assert LOCK not in store.objects
