"""A sync on a SeaweedFS cluster (fixtures_s3.py ``seaweedfs_cluster``: three volume
servers, each object on two of them) that loses a volume server mid-sync: the store's
replication keeps what it held and places new writes on the servers left."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest
from fixtures_s3 import SeaweedFS
from sync_env import MIB, qemu_io, same_content, world

from vmclient.store import layout
from vmclient.store.remote import PassOn, RemoteStore
from vmclient.store.transport import close_store
from vmclient.sync import maintenance, restore
from vmclient.transport import open_store

pytestmark = pytest.mark.asyncio(loop_scope="session")


class KillsAVolumeServer(PassOn):
    """The device's store; as the sync's second pack goes up, the volume server holding
    the most data is SIGKILLed (concurrently with that upload)."""

    def __init__(self, inner: RemoteStore, s3: SeaweedFS) -> None:
        super().__init__(inner)
        self.s3, self.packs = s3, 0
        self.killed: tuple[int, int] | None = None  # (server, bytes of volumes it held)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        self.packs += "/packs/" in path
        if self.packs == 2 and self.killed is None:
            self.killed = (-1, 0)
            await asyncio.gather(self.inner.put_atomic(path, data, exclusive=exclusive),
                                 asyncio.to_thread(self.kill))
            return
        await self.inner.put_atomic(path, data, exclusive=exclusive)

    def kill(self) -> None:
        held = {i: self.s3.volume_bytes(i) for i in range(self.s3.volumes)}
        busiest = max(held, key=lambda i: held[i])
        self.s3.kill_volume(busiest)
        self.killed = (busiest, held[busiest])


async def test_a_volume_server_killed_mid_sync_loses_nothing_and_the_sync_completes(
        tmp_path: Path, seaweedfs_cluster: SeaweedFS) -> None:
    """A VM synced once; 24 MiB of new data synced while the volume server holding the
    most data is SIGKILLed between its packs: the sync completes (new objects go to the
    two servers left), and both snapshots verify and restore byte-identical from the
    replicas, read through the device's own identity."""
    s3 = seaweedfs_cluster
    async with contextlib.AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(tmp_path))
        prefix = s3.prefix()
        creds = s3.credentials_file(await s3.issue(prefix, w.a.id), tmp_path / "s3-creds")
        device = open_store(s3.url(prefix), s3_credentials=creds)
        stack.push_async_callback(close_store, device)
        dom = w.create("volkill", random_mib=8, data=[(0x61, 0, MIB)], start=False)
        vm = dom.name()
        assert (await w.sync(dom, remote=device)).seq == 1
        first = tmp_path / "first.qcow2"
        shutil.copy(w.disk(vm), first)
        rand = tmp_path / "new-data"
        rand.write_bytes(os.urandom(24 * MIB))  # two packs' worth, none deduplicated
        qemu_io(w.disk(vm), f"write -s {rand} {24 * MIB} {24 * MIB}")

        killer = KillsAVolumeServer(device, s3)
        second = await w.sync(dom, remote=killer)
        assert second.seq == 2 and killer.packs >= 2, (second, killer.packs)
        assert killer.killed is not None and killer.killed[1] > 0, killer.killed
        assert f"volume{killer.killed[0]}" not in s3.procs  # (gone, not restarted)

        for snapshot, disk in ((layout.snapshot_name(1), first),
                               (layout.snapshot_name(2), w.disk(vm))):
            v = await maintenance.verify(device, w.a.signers, w.keys[vm], device=w.a.id,
                                         vm=vm, snapshot=snapshot)
            assert v.chunks > 0
            dest = tmp_path / f"restored-{snapshot}.qcow2"
            await restore.restore_vm(device, w.a.signers, w.keys[vm], device=w.a.id, vm=vm,
                                     dest={"vda": dest}, snapshot=snapshot)
            assert same_content(disk, dest), snapshot
