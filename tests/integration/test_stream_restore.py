"""Issue 19: ``vm restore --stream`` over a real SFTP server and real libvirt/QEMU.

The VM runs from a LUKS overlay whose backing image is nbdkit (our Python plugin)
serving the snapshot's chunks on demand; a block pull fills the overlay; at the end
the disk is byte-identical to the snapshot, the backing chain is gone and nbdkit
stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import time
from pathlib import Path

import libvirt
import pytest
from fixtures_virt import URI
from provision_env import need_tools
from stream_env import disk_bytes, give_to, put_vm_snapshot, streamed

from vmclient.provision import qemuimg
from vmclient.provision.stream import STREAM_DIR, Streams
from vmclient.store import layout
from vmclient.virt.stream import pull_state

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
        data = disk_bytes(8)
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


async def wait_for(what: str, cond, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_faults_mid_fill_link_drop_killed_nbdkit_power_loss(tmp_path: Path) -> None:
    """The fill survives the link dropping (sshd gone for longer than the read timeout),
    nbdkit killed, and QEMU + provd gone (power loss: a new provd resumes it when the VM
    starts again); at the end the disk is the snapshot's, and the VM never got an I/O
    error event."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("sf")
        data = disk_bytes(8, seed=9)
        await put_vm_snapshot(s.env, s.server.repo, vm, data, s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=1.0)  # ~8 s: time for faults
        streams = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
        installed = await streams.restore(vm)
        conn = libvirt.open(URI)
        try:
            errors = io_errors(conn, vm)
            sdir = s.prov.vm_dir(vm) / STREAM_DIR

            async def progressed(at_least: int):  # type: ignore[no-untyped-def]
                async def cond() -> bool:
                    st = await pull_state(s.env.hv, installed.uuid, vm)
                    return any(c >= at_least for c, _e in st.jobs.values())
                return cond

            # 1. the link drops for longer than a read waits, then returns
            await wait_for("the fill to begin", await progressed(1 << 19))
            s.server.stop()
            await asyncio.sleep(4)
            s.server.restart()
            # 2. nbdkit is killed: provd starts another; the fill goes on
            await wait_for("the fill to go on", await progressed(3 << 20))
            pid = int((sdir / "vda.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            await wait_for("nbdkit back", lambda: _async(
                (sdir / "vda.pid").exists() and int((sdir / "vda.pid").read_text()) != pid))
            # 3. power loss: QEMU and provd (with its nbdkit) gone at once
            await wait_for("the fill to go on", await progressed(5 << 20))
            await streams.close()
            await streams.stop_serving(vm)
            await s.env.hv.destroy(installed.uuid, vm)
            assert sdir.exists()
            streams = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
            assert await streams.resume_all() == [vm]
            await wait_for("nbdkit serving again", lambda: _async((sdir / "vda.sock").exists()))
            await s.prov.start(vm)
            async with asyncio.timeout(120):
                await streams.done[vm].wait()
            assert not sdir.exists()
            assert errors == []
        finally:
            conn.close()
        await s.env.hv.destroy(installed.uuid, vm)
        (disk,) = [Path(p) for p in installed.disks.values()]
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)
        await streams.close()


async def _async(value: bool) -> bool:
    return value
