"""Sync and restore over SFTP to a real sshd on 127.0.0.1, as a confined device account."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import pytest
from fixtures_sshd import ssh_server
from sync_env import MIB, hmp_write, same_content, world

from vmclient.errors import VMClientError
from vmclient.sync import maintenance, restore
from vmclient.transport import close_store

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_sync_over_sftp_survives_dropped_sessions(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        server = stack.enter_context(ssh_server())
        w = await stack.enter_async_context(world(tmp_path))
        account = server.add_device(w.a.id)
        remote = server.store(account)
        try:
            dom = w.create("sftp", random_mib=24, data=[(0x31, 0, MIB)])
            killer = threading.Timer(0.6, server.kill_sessions)  # mid-upload, most likely
            killer.start()
            try:
                await w.sync(dom, remote=remote)
            except (VMClientError, OSError) as exc:  # a dropped link may fail the sync
                print("first sync:", exc)
            killer.join()
            first = await w.sync(dom, remote=remote)  # completes; nothing that arrived goes again
            hmp_write(dom, f"write -P 0x32 {2 * MIB} 65536")
            second = await w.sync(dom, remote=remote)
            assert (second.mode, second.chunks_read, second.seq) == ("incremental", 1,
                                                                     first.seq + 1)
            dest = tmp_path / "r.qcow2"
            await restore.restore_vm(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                     vm=dom.name(), dest={"vda": dest})
            assert same_content(w.disk(dom.name()), dest)
            v = await maintenance.verify(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                         vm=dom.name())
            assert v.seq == second.seq
        finally:
            await close_store(remote)
