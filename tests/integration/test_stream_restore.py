"""Issue 19: ``vm restore --stream`` over a real SFTP server and real libvirt/QEMU.

The VM runs from a LUKS overlay whose backing image is nbdkit (our Python plugin)
serving the snapshot's chunks on demand; a block pull fills the overlay; at the end
the disk is byte-identical to the snapshot, the backing chain is gone and nbdkit
stopped."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import libvirt
import pytest
from provision_env import need_tools
from stream_env import disk_bytes, give_to, put_vm_snapshot, streamed

from vmclient.provision import qemuimg
from vmclient.provision.stream import STREAM_DIR, Streams
from vmclient.store import layout

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()
    from testlib import need
    need(shutil.which("nbdkit") is not None, "nbdkit is not installed")


def io_errors(conn: libvirt.virConnect, name: str) -> list[int]:
    """Every I/O error event of domain ``name`` from now on (appended as they come)."""
    seen: list[int] = []
    conn.domainEventRegisterAny(conn.lookupByName(name), libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR,
                                lambda _c, _d, _src, _dev, action, _o: seen.append(action), None)
    return seen


async def test_streamed_restore_runs_at_once_and_fills_to_the_snapshot(tmp_path: Path) -> None:
    async with streamed(tmp_path) as s:
        vm = s.env.name("st")
        data = disk_bytes(16)
        await put_vm_snapshot(s.env, s.server.repo, vm, data, s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        streams = Streams(s.prov, s.config, poll=0.2)
        s.env.cfg = s.env.cfg  # (bandwidth unlimited: fill_mib_s 0)
        t0 = time.monotonic()
        installed = await streams.restore(vm)
        print(f"running after {time.monotonic() - t0:.1f} s")
        assert installed.state == "running"
        sdir = s.prov.vm_dir(vm) / STREAM_DIR
        assert sdir.exists()
        await asyncio.wait_for(streams.done[vm].wait(), 120)
        assert not sdir.exists()  # nbdkit stopped, its specs gone
        xml = await s.env.hv.xml_desc(installed.uuid, vm)
        assert "nbd" not in xml
        (disk,) = [Path(p) for p in installed.disks.values()]
        info = await qemuimg.info(disk)
        assert "backing-filename" not in info
        await s.env.hv.destroy(installed.uuid, vm)
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)
        await streams.close()
