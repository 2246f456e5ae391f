"""Sync and restore over SFTP to a real sshd on 127.0.0.1, as a confined device account."""

from __future__ import annotations

import threading
from pathlib import Path

from fixtures_sshd import ssh_server
from sync_env import MIB, hmp_write, run, same_content, world

from vmclient.errors import VMClientError
from vmclient.sync import maintenance, restore
from vmclient.transport import close_store


def test_sync_over_sftp_survives_dropped_sessions(tmp_path: Path) -> None:
    with ssh_server() as server, world(tmp_path) as w:
        account = server.add_device(w.a.id)
        remote = server.store(account)
        try:
            dom = w.create("sftp", random_mib=24, data=[(0x31, 0, MIB)])
            killer = threading.Timer(0.6, server.kill_sessions)  # mid-upload, most likely
            killer.start()
            try:
                w.sync(dom, remote=remote)
            except (VMClientError, OSError) as exc:  # a dropped link may fail the sync
                print("first sync:", exc)
            killer.join()
            first = w.sync(dom, remote=remote)  # completes; nothing that arrived goes again
            hmp_write(dom, f"write -P 0x32 {2 * MIB} 65536")
            second = w.sync(dom, remote=remote)
            assert (second.mode, second.chunks_read, second.seq) == ("incremental", 1,
                                                                     first.seq + 1)
            dest = tmp_path / "r.qcow2"
            run(restore.restore_vm(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                   vm=dom.name(), dest={"vda": dest}))
            assert same_content(w.disk(dom.name()), dest)
            v = run(maintenance.verify(remote, w.a.signers, w.keys[dom.name()], device=w.a.id,
                                       vm=dom.name()))
            assert v.seq == second.seq
        finally:
            run(close_store(remote))
