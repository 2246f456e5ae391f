"""Retention: prune deletes old snapshots and the chunks only they used, nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sync_env import MIB, qemu_io, repo_bytes, same_content, world

from vmclient.store import layout
from vmclient.store.errors import ObjectNotFound
from vmclient.store.remote import LockToken, PassOn
from vmclient.sync import maintenance
from vmclient.sync.retention import Retention
from vmclient.transport.localfs import LocalDirStore

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_prune_keeps_what_kept_snapshots_need(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("prune", start=False, random_mib=8, data=[(0x01, 0, MIB)])
        vm, disk = dom.name(), w.disk(dom.name())
        await w.sync(dom)  # 1: the random 8 MiB only this snapshot has
        qemu_io(disk, f"write -z {8 * MIB} {8 * MIB}", f"write -P 0x02 {MIB} {MIB}")
        await w.sync(dom)  # 2
        qemu_io(disk, f"write -P 0x03 {2 * MIB} {MIB}")
        await w.sync(dom)  # 3
        shutil.copy(disk, tmp_path / "at3.qcow2")
        qemu_io(disk, f"write -P 0x04 {3 * MIB} {MIB}")
        await w.sync(dom)  # 4
        before = repo_bytes(w.repo_dir)

        result = await maintenance.prune(w.remote, w.a.signing, w.keys[vm], vm,
                                         Retention(last=2, daily=0, weekly=0))
        assert (result.kept, result.deleted_snapshots) == ([3, 4], [1, 2])
        assert result.repacked_packs == 1  # snapshot 1's pack: 0x01 still needed, random not
        assert before - repo_bytes(w.repo_dir) > 7 * MIB
        with pytest.raises(ObjectNotFound):
            await w.verify(vm, layout.snapshot_name(1))
        assert (await w.verify(vm, layout.snapshot_name(3))).chunks == 3
        assert (await w.verify(vm)).chunks == 4
        await w.restore_b(vm, tmp_path / "b" / "r3.qcow2", snapshot=layout.snapshot_name(3))
        assert same_content(tmp_path / "at3.qcow2", tmp_path / "b" / "r3.qcow2")
        await w.restore_b(vm, tmp_path / "b" / "r4.qcow2")
        assert same_content(disk, tmp_path / "b" / "r4.qcow2")

        # the next sync after a prune still deduplicates against what is left
        qemu_io(disk, f"write -P 0x05 {4 * MIB} 65536")
        assert (await w.sync(dom)).uploaded_chunks == 1
        again = await maintenance.prune(w.remote, w.a.signing, w.keys[vm], vm,
                                        Retention(last=2, daily=0, weekly=0))
        assert again.kept == [4, 5]
        assert (await w.verify(vm)).seq == 5


class DiesAfter(PassOn):
    """A RemoteStore whose link dies after ``n`` writes or deletes: every later one fails."""

    def __init__(self, inner: LocalDirStore, n: int) -> None:
        super().__init__(inner)
        self.left = n

    def _spend(self) -> None:
        if self.left <= 0:
            raise ConnectionResetError("link dropped")
        self.left -= 1

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        self._spend()
        await self.inner.put_atomic(path, data, exclusive=exclusive)

    async def delete(self, path: str) -> None:
        self._spend()
        await self.inner.delete(path)

    async def lock(self, path: str, holder: str, *, stale_after: int = 1800) -> LockToken:
        self._spend()
        return await self.inner.lock(path, holder, stale_after=stale_after)


async def test_prune_interrupted_anywhere_loses_nothing_kept(tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("prunex", start=False, random_mib=8, data=[(0x01, 0, MIB)])
        vm, disk = dom.name(), w.disk(dom.name())
        for n in range(2, 6):  # each round zeroes 2 MiB of the random data, overwrites 1 MiB
            await w.sync(dom)
            qemu_io(disk, f"write -z {(4 + 2 * n) * MIB} {2 * MIB}", f"write -P {n:#x} {MIB} {MIB}")
        await w.sync(dom)  # 5 snapshots; keeping 4 and 5 frees whole packs and most of the first
        shutil.copytree(w.repo_dir, tmp_path / "before")
        policy = Retention(last=2, daily=0, weekly=0)
        step = 0
        while True:
            shutil.rmtree(w.repo_dir)
            shutil.copytree(tmp_path / "before", w.repo_dir)
            try:
                await maintenance.prune(DiesAfter(w.remote, step), w.a.signing, w.keys[vm], vm,
                                        policy)
            except ConnectionResetError:
                pass
            else:
                break  # it got through: every point before this one was tried
            for seq in (4, 5):
                assert (await w.verify(vm, layout.snapshot_name(seq))).seq == seq
            again = await maintenance.prune(w.remote, w.a.signing, w.keys[vm], vm, policy)
            assert again.kept == [4, 5]
            assert (await w.verify(vm)).seq == 5 and (await w.verify(vm, layout.snapshot_name(4))).seq == 4
            step += 1
        assert step >= 10  # lock, 3 snapshots, repack (pack, index), index, 3+ deletes
        await w.restore_b(vm, tmp_path / "b" / "last.qcow2")
        assert same_content(disk, tmp_path / "b" / "last.qcow2")
