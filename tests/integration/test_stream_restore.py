"""Issue 19: ``vm restore --stream`` over a real SFTP server and real libvirt/QEMU.

The VM runs from a LUKS overlay whose backing image is nbdkit (our Python plugin)
serving the snapshot's chunks on demand; a block pull fills the overlay; at the end
the disk is byte-identical to the snapshot, the backing chain is gone and nbdkit
stopped."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from pathlib import Path, PurePosixPath
from typing import Any

import libvirt
import pytest
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_virt import URI, scaled
from powerd_harness import Logind, PowerDaemons
from provision_env import need_tools, set_lease
from stream_env import (
    CHUNK,
    Streamed,
    checking_disk,
    disk_bytes,
    give_to,
    guest_counters,
    put_snapshot_of,
    put_vm_snapshot,
    recipe_text,
    streamed,
)

from testlib import SERVICES, need, vmclientctl
from vmclient.dbus import names
from vmclient.dbus.client import properties_watched
from vmclient.host.gate import StartRefused
from vmclient.provision import qemuimg, spec
from vmclient.provision.domainxml import DiskBinding, domain_xml
from vmclient.provision.stream import STREAM_DIR, Streams
from vmclient.store import layout
from vmclient.virt.stream import nbd_backed, pull_state

pytestmark = pytest.mark.asyncio(loop_scope="session")


def fill_rate(config: str, mib_s: float) -> str:
    """provision.toml's text with the fill's rate set to ``mib_s`` (write_config writes
    the line)."""
    out, n = re.subn(r"(?m)^fill_mib_s = .*$", f"fill_mib_s = {mib_s}", config)
    assert n == 1, config
    return out


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()

    need(shutil.which("nbdkit") is not None, "nbdkit is not installed")


def io_errors(conn: libvirt.virConnect, name: str) -> list[int]:
    """Every I/O error event of domain ``name`` from now on (appended as they come)."""
    seen: list[int] = []
    conn.domainEventRegisterAny(conn.lookupByName(name), libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR,
                                lambda _c, _d, _src, _dev, action, _o: seen.append(action), None)
    return seen


async def test_a_guest_checks_its_streamed_disk_pauses_without_the_link_and_resumes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The VM runs before its disk is local; its guest (a boot sector that reads and sums
    the rest of its disk, over and over) sees only right data.  The link drops for longer
    than a read waits: the VM pauses (rerror_policy='stop'), the guest sees no error; the
    link returns: the VM resumes and its next passes match.  At the end the disk is the
    snapshot's, the backing chain is gone and nbdkit stopped."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("st")
        data = checking_disk(24)  # more than the read-ahead: the first pass needs the link
        await put_vm_snapshot(s.env, s.server.repo, vm, data, s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        # TCG: the boot sector runs there at once (this machine's KVM keeps SeaBIOS busy)
        s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=0.25, domain_type="qemu",
                                         cpu_mode="maximum", cpu_disable=())
        streams = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
        # without a lease it may not run: refused before any nbdkit or disk (by hand it
        # was refused only at the start, after ~30 s of nbdkits and overlays, then undone)
        set_lease(s.env.cfg.manage_dir, days=-1)
        caplog.set_level(logging.INFO, logger="vmclient.provision")
        with pytest.raises(StartRefused, match="lease has expired"):
            await streams.restore(vm)
        assert "nbdkit serves" not in caplog.text and not s.prov.vm_dir(vm).exists()
        set_lease(s.env.cfg.manage_dir, days=14)
        installed = await streams.restore(vm)
        assert installed.state == "running"
        sdir = s.prov.vm_dir(vm) / STREAM_DIR
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(vm)
            errors = io_errors(conn, vm)
            await wait_for("the guest's checker", lambda: _async(guest_counters(dom)[3]))
            assert sdir.exists() and nbd_backed(dom.XMLDesc(0)) == ["vda"]  # still streaming
            s.server.stop()
            await wait_for("the VM to pause on the read it cannot do", lambda: _async(
                dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR]))
            await asyncio.sleep(1)
            assert dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED  # no link: it stays paused
            assert vm in streams.filled  # (paused, failed pulls: still filling, still shown)
            s.server.restart()
            await wait_for("the VM to resume and pass", lambda: _async(
                dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and guest_counters(dom)[0] >= 1),
                limit=120)
            s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=0)  # now fill at once
            with contextlib.suppress(libvirt.libvirtError):  # (unless between two pulls)
                dom.blockJobSetSpeed("vda", 0, 0)
            async with asyncio.timeout(120):
                await streams.done[vm].wait()
            assert vm not in streams.filled
            assert guest_counters(dom)[1:3] == (0, 0)  # no pass mismatched, no read failed
            assert errors and set(errors) == {libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE}
        finally:
            conn.close()
        assert not sdir.exists()  # nbdkit stopped, its specs gone
        assert nbd_backed(await s.env.hv.xml_desc(installed.uuid, vm)) == []
        await s.env.hv.destroy(installed.uuid, vm)
        (disk,) = [Path(p) for p in installed.disks.values()]
        assert "backing-filename" not in await qemuimg.info(disk)
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)
        await streams.close()


async def wait_for(what: str, cond, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not await cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def start_provd(config: Path, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vmclient.provision.daemon", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while vmclientctl("vm", "list", env=env).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.1)
    return proc


async def test_fill_survives_a_killed_nbdkit_and_a_power_loss(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    """``vmclientctl vm restore --stream`` through provd on the system bus, of a snapshot
    with memory (downloaded whole first, then the VM restored running from it); the fill
    survives nbdkit killed, and a power loss (provd, its nbdkit and QEMU gone at once: the
    next provd takes the fill up when the VM starts again).  At the end the disk is the
    snapshot's, and the VM never got an I/O error event (the firmware-only guest reads
    nothing meanwhile)."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("sf")
        data = disk_bytes(8, seed=9)
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        memory, uuid, live = await saved_on_a(s, vm, raw)  # it resumes where it was
        await put_snapshot_of(s.env, s.server.repo, vm, len(data),
                              (data[o:o + CHUNK] for o in range(0, len(data), CHUNK)), s.keys,
                              memory=memory, uuid=uuid, domain=live)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        # ~8 s of fill at 1 MiB/s: time for the faults (at 2 MiB/s, on a loaded machine
        # the fill once ended before the test had seen 2 MiB of it)
        s.config.write_text(fill_rate(s.config.read_text(), 1.0))
        env = {**system_bus.env(), "PYTHONPATH": str(SERVICES / "src")}
        log_path = tmp_path / "provd.log"
        provd = start_provd(s.config, env, log_path)
        conn = libvirt.open(URI)
        try:
            # (in a thread: this loop must answer libvirt's keepalives meanwhile, or
            # libvirtd closes the test's own connection when the restore takes > ~30 s)
            r = await asyncio.to_thread(vmclientctl, "vm", "restore", vm, "--stream", env=env,
                                        timeout=scaled(240))
            assert r.returncode == 0, r.stderr + log_path.read_text()
            assert f"{vm}: business VM, running" in r.stdout
            assert "its disks fill in the background" in r.stderr
            installed = await s.prov.get(vm)
            assert installed.uuid == uuid
            # from its memory image: restored, not booted
            assert conn.lookupByName(vm).state() == [libvirt.VIR_DOMAIN_RUNNING,
                                                     libvirt.VIR_DOMAIN_RUNNING_RESTORED]
            assert not list(s.env.cfg.staging_dir.glob("*.save"))  # plaintext RAM gone
            errors = io_errors(conn, vm)
            sdir = s.prov.vm_dir(vm) / STREAM_DIR
            # `vm list` shows it streaming and how much is local (provd's Fills); the
            # fill of 8 MiB at 1 MiB/s lasts seconds more
            listed = [""]

            async def listed_streaming() -> bool:
                r = await asyncio.to_thread(vmclientctl, "vm", "list", env=env,
                                            timeout=scaled(60))
                listed[0] = r.stdout
                return r.returncode == 0 and "streaming" in r.stdout

            await wait_for("vm list to show the fill", listed_streaming)
            row = re.search(rf"^{vm}\s+business\s+running, streaming (\d+\.\d)%", listed[0],
                            re.M)
            assert row and 0 <= float(row[1]) < 100, listed[0]

            async def progressed(at_least: int):  # type: ignore[no-untyped-def]
                async def cond() -> bool:
                    st = await pull_state(s.env.hv, installed.uuid, vm)
                    return any(c >= at_least for c, _e in st.jobs.values())
                return cond

            # 1. nbdkit is killed: provd starts another; the fill goes on
            await wait_for("the fill to go on", await progressed(2 << 20))
            pid = int((sdir / "vda.pid").read_text())
            os.kill(pid, signal.SIGKILL)
            await wait_for("nbdkit back", lambda: _async(
                (sdir / "vda.pid").exists() and int((sdir / "vda.pid").read_text()) != pid))
            # 2. power loss: QEMU, provd and its nbdkit gone at once
            await wait_for("the fill to go on", await progressed(5 << 20))
            provd.kill()
            provd.wait()
            os.kill(int((sdir / "vda.pid").read_text()), signal.SIGKILL)
            await s.env.hv.destroy(installed.uuid, vm)
            assert sdir.exists()
            provd = await asyncio.to_thread(start_provd, s.config, env, log_path)
            await wait_for("nbdkit serving again", lambda: _async((sdir / "vda.sock").exists()))
            r = await asyncio.to_thread(vmclientctl, "vm", "start", vm, env=env,
                                        timeout=scaled(120))
            assert r.returncode == 0, r.stderr
            await wait_for("the fill to end", lambda: _async(not sdir.exists()), limit=120)
            assert errors == []
        finally:
            conn.close()
            provd.send_signal(signal.SIGTERM)
            assert provd.wait(30) == 0, log_path.read_text()
        text = log_path.read_text()
        assert "Traceback" not in text, text
        assert f"streamed restores resumed: {vm}" in text
        assert f"VM {vm}: every disk is local (vda)" in text
        await s.env.hv.destroy(installed.uuid, vm)
        (disk,) = [Path(p) for p in installed.disks.values()]
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)


async def test_a_fill_that_runs_out_of_file_descriptors_goes_on_in_the_same_provd(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    """provd runs out of file descriptors mid-fill (its limit lowered below the ones it
    holds, as a leak or a burst of connections does it): the fill's next look cannot
    read nbdkit's pidfile, an OSError (EMFILE) that is not one of ours, and the nbdkit
    serving the VM is not taken for dead on it (it once was, and killed).  Before, the
    fill task died of it, silently, and the VM ran on its network-backed disk until provd
    restarted.  Now the error is logged once with its traceback and the fill tried again
    with the link probes' backoff: once descriptors are there again it goes on and
    completes in the same provd, the disk the snapshot's."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("fd")
        data = disk_bytes(8, seed=13)
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        await put_vm_snapshot(s.env, s.server.repo, vm, data, s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        s.config.write_text(fill_rate(s.config.read_text(), 0.25))  # 32 s: the fault is early
        env = {**system_bus.env(), "PYTHONPATH": str(SERVICES / "src")}
        log_path = tmp_path / "provd.log"
        provd = start_provd(s.config, env, log_path)
        try:
            r = await asyncio.to_thread(vmclientctl, "vm", "restore", vm, "--stream", env=env,
                                        timeout=scaled(240))
            assert r.returncode == 0, r.stderr + log_path.read_text()
            installed = await s.prov.get(vm)
            sdir = s.prov.vm_dir(vm) / STREAM_DIR

            async def pulling() -> bool:
                return bool((await pull_state(s.env.hv, installed.uuid, vm)).jobs)

            await wait_for("the fill", pulling)
            nbdkit = (sdir / "vda.pid").read_text()
            soft, hard = resource.prlimit(provd.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(provd.pid, resource.RLIMIT_NOFILE, (3, hard))  # none left
            try:
                # the fill's next look cannot read nbdkit's pidfile
                await wait_for("the fill to meet the limit", lambda: _async(
                    "Too many open files" in log_path.read_text()), limit=scaled(30))
                await asyncio.sleep(2)  # more looks while it lasts
                assert sdir.exists() and provd.poll() is None
            finally:
                resource.prlimit(provd.pid, resource.RLIMIT_NOFILE, (soft, hard))
            # the nbdkit serving the VM's disk was not taken for dead (nor killed) on it
            assert (sdir / "vda.pid").read_text() == nbdkit
            os.kill(int(nbdkit), 0)  # and it runs (ProcessLookupError if not)
            conn = libvirt.open(URI)
            try:
                dom = conn.lookupByName(vm)
                deadline = time.monotonic() + scaled(120)
                while sdir.exists():  # the fill goes on: at full speed now
                    assert time.monotonic() < deadline, \
                        f"the fill did not go on: {stream_evidence(sdir.parent)}\n" \
                        + log_path.read_text()[-3000:]
                    with contextlib.suppress(libvirt.libvirtError):  # (between two pulls)
                        if dom.blockJobInfo("vda", 0):
                            dom.blockJobSetSpeed("vda", 0, 0)
                    await asyncio.sleep(0.2)
            finally:
                conn.close()
            assert provd.poll() is None  # the same provd
        finally:
            provd.send_signal(signal.SIGTERM)
            assert provd.wait(30) == 0, log_path.read_text()
        text = log_path.read_text()
        assert f"VM {vm}: every disk is local (vda)" in text, text
        assert text.count("Traceback") == 1, text
        assert f"VM {vm}: the fill of its disks failed (OSError: [Errno 24] Too many open " \
            "files" in text, text
        assert re.search(rf"VM {vm}: the fill of its disks goes on \(after \d+ failed "
                         r"attempts\)", text), text
        await s.env.hv.destroy(installed.uuid, vm)
        (disk,) = [Path(p) for p in installed.disks.values()]
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)


async def test_two_vms_stream_at_once_each_shows_its_own_fill_across_provd_restarts(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    """Two VMs restored with ``vmclientctl vm restore --stream`` fill at once: ``vm list``
    (text and ``--json``) shows each streaming with its own share (between what its block
    job said just before and just after the listing), and provd's ``Fills`` announced both
    (PropertiesChanged).  provd is killed, the second VM's restore marker back as if provd
    had been killed between that VM's start and the marker's removal: the next provd takes
    both fills up (before, it skipped the second: its disk never filled), neither share
    going back.  Then a power loss (provd, nbdkits, QEMU; the marker back again): the next
    provd lists both VMs off and streaming where their fills were last saved, not at 0%.
    Started again, both fill to the end and leave ``Fills``; each disk is its snapshot's."""
    async with streamed(tmp_path) as s:
        vms = [s.env.name("fa"), s.env.name("fb")]
        data = {vm: disk_bytes(8, seed=30 + i) for i, vm in enumerate(vms)}
        for vm in vms:
            await put_vm_snapshot(s.env, s.server.repo, vm, data[vm], s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        base = s.config.read_text()
        # 8 MiB at 0.1 MiB/s: both still fill through the restarts
        s.config.write_text(fill_rate(base, 0.1))
        env = {**system_bus.env(), "PYTHONPATH": str(SERVICES / "src")}
        log_path = tmp_path / "provd.log"
        provd = start_provd(s.config, env, log_path)
        client = await MessageBus(bus_address=system_bus.address).connect()
        announced: list[dict[str, list[int]]] = []

        def on_change(changed: dict[str, Any]) -> None:
            if "Fills" in changed:
                announced.append(changed["Fills"])

        async def listed() -> dict[str, dict[str, Any]]:
            r = await asyncio.to_thread(vmclientctl, "vm", "list", "--json", env=env,
                                        timeout=scaled(60))
            assert r.returncode == 0, r.stderr
            return {v["name"]: v for v in json.loads(r.stdout)}

        uuids: dict[str, str] = {}

        async def job_shares() -> dict[str, float]:
            out = {}
            for vm in vms:
                st = await pull_state(s.env.hv, uuids[vm], vm)
                cur, end = st.jobs.get("vda", (0, 0))
                out[vm] = 100 * cur / end if end else -1.0
            return out

        rows: dict[str, dict[str, Any]] = {}

        async def each_its_own() -> bool:
            before = await job_shares()
            rows.update(await listed())
            after = await job_shares()
            return all("fill" in rows[vm] and before[vm] - 0.1 <= rows[vm]["fill"]
                       <= after[vm] + 0.1 for vm in vms)

        sdirs = [s.prov.vm_dir(vm) / STREAM_DIR for vm in vms]
        try:
            async with properties_watched(client, names.PROVISION_BUS_NAME,
                                          names.PROVISION_PATH, on_change):
                for vm in vms:
                    r = await asyncio.to_thread(vmclientctl, "vm", "restore", vm, "--stream",
                                                env=env, timeout=scaled(240))
                    assert r.returncode == 0, r.stderr + log_path.read_text()
                    uuids[vm] = (await s.prov.get(vm)).uuid
                await wait_for("vm list to show each VM's own fill", each_its_own)
                assert rows[vms[0]]["fill"] > rows[vms[1]]["fill"]  # the first began earlier
                r = await asyncio.to_thread(vmclientctl, "vm", "list", env=env)
                for vm in vms:
                    assert re.search(rf"^{vm}\s+business\s+running, streaming \d+\.\d%",
                                     r.stdout, re.M), r.stdout
                assert any(set(f) == set(vms) for f in announced), announced
                # 1. provd killed; the second VM's restore was not done with its marker
                before = {vm: rows[vm]["fill"] for vm in vms}
                marker = s.prov.install_marker(vms[1])
                marker.write_text("restore started\n")
                provd.kill()
                provd.wait()
                provd = await asyncio.to_thread(start_provd, s.config, env, log_path)
                await wait_for("both fills taken up", lambda: _both_filling(listed, vms))
                now = await listed()
                for vm in vms:
                    assert now[vm]["state"] == "running" and now[vm]["fill"] >= before[vm]
                assert not marker.exists()
                # 2. power loss: QEMU, provd and the nbdkits gone at once
                before = {vm: v["fill"] for vm, v in (await listed()).items() if vm in vms}
                provd.kill()
                provd.wait()
                for sdir in sdirs:
                    with contextlib.suppress(ProcessLookupError, OSError, ValueError):
                        os.kill(int((sdir / "vda.pid").read_text()), signal.SIGKILL)
                for vm in vms:
                    await s.env.hv.destroy(uuids[vm], vm)
                marker.write_text("restore started\n")  # (and this time it is off)
                s.config.write_text(base)  # (the fill now at full speed)
                provd = await asyncio.to_thread(start_provd, s.config, env, log_path)
                await wait_for("both VMs listed streaming", lambda: _both_filling(listed, vms))
                now = await listed()
                for vm in vms:  # (no job tells it: what the fill saved)
                    assert now[vm]["state"] == "shutoff", now[vm]
                    assert 0 < now[vm]["fill"] <= before[vm] + 0.1, (now[vm], before[vm])
                for vm in vms:
                    r = await asyncio.to_thread(vmclientctl, "vm", "start", vm, env=env,
                                                timeout=scaled(120))
                    assert r.returncode == 0, r.stderr
                await wait_for("both fills to end", lambda: _async(
                    not any(d.exists() for d in sdirs)), limit=120)
                assert not marker.exists()
                await wait_for("Fills empty", lambda: _async(bool(announced)
                                                             and announced[-1] == {}))
                assert all("fill" not in v for v in (await listed()).values())
        finally:
            client.disconnect()
            provd.send_signal(signal.SIGTERM)
            assert provd.wait(30) == 0, log_path.read_text()
        text = log_path.read_text()
        assert "Traceback" not in text, text
        assert f"streamed restores resumed: {vms[0]}, {vms[1]}" in text, text
        assert f"VM {vms[1]} runs: provd stopped during its streamed restore" in text
        for vm in vms:
            assert f"VM {vm}: every disk is local (vda)" in text
            installed = await s.prov.get(vm)
            await s.env.hv.destroy(installed.uuid, vm)
            (disk,) = [Path(p) for p in installed.disks.values()]
            raw = tmp_path / f"{vm}.raw"
            raw.write_bytes(data[vm])
            assert await qemuimg.identical(disk, s.keys.passphrase(), raw)


async def _both_filling(listed, vms: list[str]) -> bool:  # type: ignore[no-untyped-def]
    rows = await listed()
    return all("fill" in rows.get(vm, {}) for vm in vms)


async def saved_on_a(s: Streamed, vm: str, raw: Path) -> tuple[bytes, str, str]:
    """Laptop A's VM as provisioning defines it, its disk holding ``raw``, running, then
    saved: (its memory image, its UUID, its live XML)."""
    pp = s.keys.passphrase()
    await s.prov.ensure_network("business")
    s.env.cfg.images_dir.mkdir(parents=True, exist_ok=True)
    a_disk = s.env.cfg.images_dir / f"{vm}-a.qcow2"
    await qemuimg.convert(raw, "raw", a_disk, pp)
    secret, uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    xml = domain_xml(spec.parse(recipe_text(vm), "recipe"), uuid=uuid, networks=s.prov.networks,
                     cpu=s.env.cfg.cpu_profile(),
                     disks={"system": DiskBinding(PurePosixPath(a_disk), secret)})
    save = Path("/dev/shm") / f"{vm}.save"
    conn = libvirt.open(URI)
    try:
        await s.env.hv.define(xml, vm)
        async with s.env.hv.ephemeral_secrets([secret], pp, vm):
            dom = conn.lookupByName(vm)
            dom.create()
        live = dom.XMLDesc(0)
        dom.save(str(save))
        dom.undefine()
    finally:
        conn.close()
        a_disk.unlink(missing_ok=True)
    memory = save.read_bytes()
    save.unlink()
    return memory, uuid, live


async def _async(value: bool) -> bool:
    return value


def serving_processes(directory: Path) -> list[int]:
    """Live nbdkit processes (not zombies) serving a spec under ``directory``."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        argv = cmdline.split(b"\0")
        if (argv[0].endswith(b"nbdkit") and str(directory).encode() in cmdline
                and state != "Z"):
            out.append(int(proc.name))
    return out


def stream_evidence(vm_dir: Path) -> str:
    """What ``<vm dir>/stream/`` holds and the tail of each nbdkit log, for a failure."""
    sdir = vm_dir / "stream"
    if not sdir.is_dir():
        return f"{sdir} is gone (the fill ended?)"
    logs = {p.name: p.read_text(errors="replace")[-600:] for p in sdir.glob("*.log")}
    return f"{sdir}: {sorted(p.name for p in sdir.iterdir())}; logs: {logs}"


@pytest.mark.parametrize("how", ["vm remove", "behind provd's back"])
async def test_removing_a_streaming_vm_stops_its_fill_and_nbdkit_and_deletes_its_disks(
        tmp_path: Path, how: str) -> None:
    """``vm remove`` mid-stream (provd's D-Bus Remove), or a removal provd is not told of
    (the management agent's unassign order), after a provd restart (its nbdkit adopted,
    not its child): the fill ends, no nbdkit is left, and the VM is removed as any VM
    (domain, key, its directory with the partial overlay and ``stream/``)."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("sr")
        await put_vm_snapshot(s.env, s.server.repo, vm, disk_bytes(8, seed=11), s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        # Still filling when it is removed, however slow the machine: at 0.01 MiB/s the
        # 8 MiB take ~10 min (the CI once spent 30 s between the restore's start and
        # provd's stop, and a fill at 0.25 MiB/s had ended by then).
        s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=0.01)
        before = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
        t0 = time.monotonic()
        installed = await before.restore(vm)
        restored = time.monotonic() - t0
        await before.close()  # provd stops; its nbdkit serves on
        vm_dir = s.prov.vm_dir(vm)
        pids = serving_processes(vm_dir)
        assert len(pids) == 1, f"one nbdkit serves on after provd stops: {pids}; " \
            f"{stream_evidence(vm_dir)} (restore {restored:.1f} s, then provd stopped " \
            f"{time.monotonic() - t0 - restored:.1f} s later)"
        pid = pids[0]
        streams = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
        try:
            assert await streams.resume_all() == [vm]

            async def pulling() -> bool:
                return bool((await pull_state(s.env.hv, installed.uuid, vm)).jobs)
            await wait_for("the fill", pulling)
            if how == "vm remove":
                await streams.remove(vm)
            else:
                await s.prov.remove(vm)
                await wait_for("the fill to end", lambda: _async(streams.fills[vm].done()),
                               limit=30)
            assert serving_processes(vm_dir) == [], f"nbdkit {pid} still runs"
            assert vm not in streams.fills or streams.fills[vm].exception() is None
            assert not vm_dir.exists() and not s.prov.keys.exists(vm)
            assert vm not in [v.name for v in await s.prov.list()]
            await asyncio.sleep(0.5)  # a fill still going would start nbdkit again
            assert serving_processes(vm_dir) == []
        finally:
            await streams.close()
            for left in serving_processes(vm_dir):
                os.kill(left, signal.SIGKILL)


async def test_the_laptop_sleeps_mid_stream_the_fill_waits_and_goes_on_after_wake(
        run_powerd: PowerDaemons, logind: Logind, tmp_path: Path) -> None:
    """vmclient-powerd pauses the streaming VM for sleep (logind's PrepareForSleep): its
    fill is suspended (no block job while the laptop sleeps) and the link goes down.  On
    wake powerd resumes the VM; with the link still down the fill starts no pull (the
    guest's reads wait, the VM may pause on one: no error reaches the guest); when the
    repository answers again the VM runs, the fill goes on and completes.  Every guest
    pass matched and the disk is the snapshot's."""
    async with streamed(tmp_path) as s:
        vm = s.env.name("sl")
        data = checking_disk(8)
        await put_vm_snapshot(s.env, s.server.repo, vm, data, s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        raw = tmp_path / "snapshot.raw"
        raw.write_bytes(data)
        run_powerd(f'[vms]\nname_prefix = "{s.env.prefix}-"\n')
        s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=0.25, domain_type="qemu",
                                         cpu_mode="maximum", cpu_disable=())
        streams = Streams(s.prov, s.config, read_timeout=2.0, poll=0.2)
        installed = await streams.restore(vm)
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName(vm)
            errors = io_errors(conn, vm)

            async def pulling() -> bool:
                return bool((await pull_state(s.env.hv, installed.uuid, vm)).jobs)

            async def never_pulls(seconds: float) -> None:
                for _ in range(int(seconds / 0.1)):
                    assert not await pulling(), "a fill while the laptop sleeps or is offline"
                    await asyncio.sleep(0.1)

            await wait_for("the guest's checker", lambda: _async(guest_counters(dom)[3]))
            await wait_for("the fill", pulling)
            logind.prepare_for_sleep(True)
            await wait_for("powerd's pause", lambda: _async(
                dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]))
            await wait_for("the fill suspended", _not(pulling), limit=10)
            s.server.stop()  # asleep: the link is gone
            await never_pulls(1.0)
            suspended = streams.filled[vm]  # still shown, as it was when the laptop slept
            assert suspended[0] < suspended[1]
            assert dom.state() == [libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER]
            logind.prepare_for_sleep(False)  # awake, the link not back yet
            await wait_for("powerd's resume", lambda: _async(
                dom.state()[1] != libvirt.VIR_DOMAIN_PAUSED_USER))
            await never_pulls(1.0)
            assert streams.filled[vm] == suspended
            s.server.restart()
            await wait_for("the VM to run and pass", lambda: _async(
                dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING and guest_counters(dom)[0] >= 1),
                limit=120)
            await wait_for("the fill again", pulling)
            s.prov.cfg = dataclasses.replace(s.prov.cfg, fill_mib_s=0)  # now fill at once
            with contextlib.suppress(libvirt.libvirtError):
                dom.blockJobSetSpeed("vda", 0, 0)
            async with asyncio.timeout(120):
                await streams.done[vm].wait()
            assert guest_counters(dom)[1:3] == (0, 0)  # no pass mismatched, no read failed
            assert set(errors) <= {libvirt.VIR_DOMAIN_EVENT_IO_ERROR_PAUSE}
        finally:
            conn.close()
            await streams.close()
        await s.env.hv.destroy(installed.uuid, vm)
        (disk,) = [Path(p) for p in installed.disks.values()]
        assert await qemuimg.identical(disk, s.keys.passphrase(), raw)


def _not(cond):  # type: ignore[no-untyped-def]
    async def negated() -> bool:
        return not await cond()
    return negated
