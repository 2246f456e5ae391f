"""The sync engine's steps against a real local repository, with a plain file as the VM's
one disk (read whole, as a disk at rest is; the capture adapter is all that is left
out): the order of the writes, what a failure at each write leaves, and the next sync
picking up without uploading again what arrived."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from vmclient.store import crypto, layout, repo
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.errors import ObjectNotFound
from vmclient.store.remote import PassOn
from vmclient.sync import capture, disks, engine, maintenance, state
from vmclient.sync.job import Hooks, SyncInterrupted, SyncJob, SyncMode, SyncResult
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import SyncView

C = 64 << 10
VM = "office"


def kind_of(path: str) -> str:
    for part, kind in (("/keys/", "keys"), ("/packs/", "pack"), ("/index/", "index"),
                       ("/snapshots/", "snapshot")):
        if part in path:
            return kind
    return "latest" if path.endswith("/latest") else path


class Recording(PassOn):
    """``inner``, noting the kind of every object put, and failing (a dropped link) at
    every put of kind ``fail``."""

    def __init__(self, inner: LocalDirStore, fail: str = "") -> None:
        super().__init__(inner)
        self.fail = fail
        self.puts: list[str] = []

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if kind_of(path) == self.fail:
            raise ConnectionResetError(f"link dropped putting {path}")
        await self.inner.put_atomic(path, data, exclusive=exclusive)
        self.puts.append(kind_of(path))


class FileRun(engine.Run):
    """The engine's steps with ``image`` as the VM's one disk, read whole."""

    def __init__(self, remote: Any, job: SyncJob, image: Path, hooks: Hooks | None = None
                 ) -> None:
        view = SyncView(job.uuid, VM, False, "business", "disks", (), ())
        super().__init__(None, remote, job, view, hooks or Hooks())  # type: ignore[arg-type]
        self.image = image
        # small packs, so that a change spans several
        self.store = ChunkStore(remote, self.store.root, job.keys, pack_target=4 * C)

    async def take(self) -> list[capture.Capture]:
        self.result.mode = SyncMode.AT_REST
        size = self.image.stat().st_size
        return [capture.Capture("vda", "system", size, self.image, disks.whole_file(size, C))]


@pytest.fixture
def env(tmp_path: Path) -> tuple[LocalDirStore, SyncJob, Path]:
    image = tmp_path / "vda.img"
    with open(image, "wb") as f:
        f.write(os.urandom(24 * C))
        f.truncate(32 * C)  # the last 8 chunks are zeros
    job = SyncJob(str(uuid.uuid4()), crypto.Ed25519PrivateKey.generate(),
                  crypto.KeySet.generate(), state_dir=tmp_path / "state",
                  scratch_dir=tmp_path / "scratch",
                  recipients=[crypto.X25519PrivateKey.generate().public_key()])
    return LocalDirStore(tmp_path / "repo"), job, image


async def sync(remote: Any, job: SyncJob, image: Path, hooks: Hooks | None = None
               ) -> SyncResult:
    return await engine.run(FileRun(remote, job, image, hooks))


async def latest_seq(remote: LocalDirStore, job: SyncJob) -> int:
    p = await repo.get_pointer(remote, {job.device_id: job.device.public_key()}, job.device_id,
                               VM)
    return p.seq


def change(image: Path, chunks: range) -> None:
    with open(image, "r+b") as f:
        for i in chunks:
            f.seek(i * C)
            f.write(os.urandom(C))


async def stored(local: LocalDirStore, job: SyncJob) -> int:
    """The chunks in the VM's packs (indexed, or found by their header)."""
    store = ChunkStore(local, layout.vm_store(job.device_id, VM), job.keys)
    return len(await store.load_index())


def collapsed(kinds: list[str]) -> list[str]:
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


@pytest.mark.asyncio
async def test_a_sync_writes_keys_packs_an_index_the_snapshot_then_latest(env: Any) -> None:
    local, job, image = env
    store = Recording(local)
    first = await sync(store, job, image)
    assert collapsed(store.puts) == ["keys", "pack", "index", "snapshot", "latest"]
    assert store.puts.count("pack") >= 2
    assert (first.seq, first.mode, first.uploaded_chunks, first.chunks_read) == \
        (1, SyncMode.AT_REST, 24, 24)
    assert state.load(job.state_dir, VM) == state.VMSyncState(1, "")  # at rest: no checkpoint
    assert not (local.root / layout.device_lock(job.device_id)).exists()
    assert not (job.scratch_dir / VM).exists()
    v = await maintenance.verify(local, {job.device_id: job.device.public_key()}, job.keys,
                                 device=job.device_id, vm=VM)
    assert (v.seq, v.chunks) == (1, 24)

    store.puts.clear()
    change(image, range(2, 6))
    second = await sync(store, job, image)  # the keys are there: not written again
    assert collapsed(store.puts) == ["pack", "index", "snapshot", "latest"]
    assert (second.seq, second.uploaded_chunks) == (2, 4)


@pytest.mark.asyncio
@pytest.mark.parametrize("fail", ["pack", "index", "snapshot", "latest"])
async def test_a_failed_write_leaves_the_previous_snapshot_and_the_next_sync_completes(
        env: Any, fail: str) -> None:
    local, job, image = env
    await sync(local, job, image)
    change(image, range(0, 8))
    with pytest.raises(ConnectionResetError):
        await sync(Recording(local, fail), job, image)
    arrived = await stored(local, job) - 24  # changed chunks in packs that arrived
    assert arrived == (0 if fail == "pack" else 8)  # every pack came before the index
    assert await latest_seq(local, job) == 1  # the previous snapshot stands
    assert state.load(job.state_dir, VM).seq == 1
    assert not (local.root / layout.device_lock(job.device_id)).exists()  # unlocked
    assert not (job.scratch_dir / VM).exists()

    after = await sync(local, job, image)
    # a snapshot that arrived without its pointer keeps its seq: it is never reused
    assert after.seq == (3 if fail == "latest" else 2)
    # packs that arrived are found (by their header if no index names them), not sent again
    assert after.uploaded_chunks == 8 - arrived and await stored(local, job) == 24 + 8
    v = await maintenance.verify(local, {job.device_id: job.device.public_key()}, job.keys,
                                 device=job.device_id, vm=VM)
    assert v.seq == after.seq


@pytest.mark.asyncio
async def test_an_interrupted_sync_stops_between_chunks_and_keeps_what_arrived(env: Any) -> None:
    local, job, image = env
    image.write_bytes(os.urandom(160 * C))  # several sealing batches (pipeline.SEAL_BATCH)
    seen: list[int] = []

    def progress(done: int, _total: int) -> None:
        seen.append(done)

    with pytest.raises(SyncInterrupted, match=f"{VM}.*safe point"):
        await sync(local, job, image, Hooks(progress, lambda: len(seen) > 140))
    with pytest.raises(ObjectNotFound):
        await latest_seq(local, job)
    assert not (local.root / layout.device_lock(job.device_id)).exists()
    arrived = await stored(local, job)
    after = await sync(local, job, image)
    assert after.seq == 1 and after.uploaded_chunks == 160 - arrived
