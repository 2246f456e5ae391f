# ruff: noqa: ASYNC240  (reading a daemon's log in a test is fine)
"""The journey as one chain (issue 14): what the admin does with ``vmclient-admin`` reaches
the laptop's daemons through the datacenter, served by the real sshd."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_sshd import ssh_server
from fixtures_virt import IMAGES, URI, scaled
from journey_env import (
    DBUS,
    PROVD,
    PROVD_PATH,
    call,
    datacenter,
    laptop_enrolment_pending,
    ok,
    provd,
    syncd,
    wait_name,
)
from provision_env import Env, assert_no_leftovers, need_tools, provision_env
from sftp_repo import b64
from sync_env import hmp_write
from syncd_env import Peers

from testlib import run, vmclientctl
from vmclient.host.keys import DeviceKeys, VMKeys
from vmclient.store import crypto
from vmclient.virt.stream import nbd_backed

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_provd_installs_from_the_sftp_repository(system_bus: PrivateSystemBus,
                                                       tmp_path: Path) -> None:
    need_tools("dbus-daemon", vm=False)
    with ssh_server() as server:
        async with provision_env(tmp_path) as env:
            dc = await datacenter(server, env, tmp_path / "admin")
            laptop_enrolment_pending(env, dc)  # provd logs in as the device's own account
            with provd(system_bus, env, dc, tmp_path) as log:
                client = await MessageBus(bus_address=system_bus.address).connect()
                try:
                    await wait_name(client, PROVD, log)
                    recipe = env.recipe(tmp_path, "sftp").read_text()
                    (vm,) = ok(await call(client, "Install", "s", [recipe]))
                    (rows,) = ok(await call(client, "List"))
                    assert [vm, "business", "shutoff", dc.image, 1] in [list(r) for r in rows]
                    assert (env.cfg.images_dir / vm / "system-v1.qcow2").exists()
                    ok(await call(client, "Remove", "s", [vm]))
                finally:
                    client.disconnect()


def ctl(bus: PrivateSystemBus, *args: str) -> subprocess.CompletedProcess[str]:
    return vmclientctl("vm", *args, env=bus.env(), timeout=scaled(60))


def running(name: str) -> bool:
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).isActive())
    finally:
        conn.close()

async def device_reports(admin: Any, capsys: pytest.CaptureFixture[str], device: str, n: int,
                         logs: list[Path], *, within_s: float) -> list[dict[str, Any]]:
    """``vmclient-admin reports DEVICE --json`` until it lists ``n`` reports; the daemons'
    logs in the failure when they do not come in time."""
    deadline = time.monotonic() + scaled(within_s)
    while True:
        assert await admin("reports", device, "--json") == 0
        out = json.loads(capsys.readouterr().out)
        if len(out) >= n:
            return list(out)
        assert time.monotonic() < deadline, "\n".join(p.read_text() for p in logs)
        await asyncio.sleep(0.5)



async def test_an_assign_order_installs_and_starts_the_vm_and_unassign_removes_it(
        system_bus: PrivateSystemBus, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """IT assigns an image with a recipe; syncd's agent fetches the order over sftp://,
    provd installs and starts the VM (D-Bus), the report comes back; then unassign."""
    need_tools("dbus-daemon")
    with ssh_server() as server:
        async with provision_env(tmp_path) as env:
            dc = await datacenter(server, env, tmp_path / "admin")
            laptop_enrolment_pending(env, dc)
            admin = functools.partial(asyncio.to_thread, dc.repo.admin)
            vm = env.name("order")
            recipe = env.recipe(tmp_path, "order")
            capsys.readouterr()
            assert await admin("assign", dc.image, dc.device_name, "--recipe", str(recipe),
                               "--start") == 0
            assert f"order 1: install {vm} on laptop and start it" in capsys.readouterr().out
            Peers(system_bus)

            reports = functools.partial(device_reports, admin, capsys, dc.device_name,
                                        within_s=180)

            client = await MessageBus(bus_address=system_bus.address).connect()
            phases: list[int] = []  # provd's progress, as a person's `vm install` shows it

            def on_signal(msg: Message) -> None:
                if msg.member == "PropertiesChanged" and msg.path == PROVD_PATH:
                    phases.extend([msg.body[1]["Phase"].value] if "Phase" in msg.body[1]
                                  else [])
            client.add_message_handler(on_signal)
            ok(await call(client, "AddMatch", "s", [
                f"type='signal',path='{PROVD_PATH}',member='PropertiesChanged'"], *DBUS))
            try:
                with provd(system_bus, env, dc, tmp_path) as plog, \
                        syncd(system_bus, env, dc, tmp_path) as slog:
                    [rep] = await reports(1, [plog, slog])
                    assert 3 in phases and phases[-1] == 1, phases  # download ... idle
                    assert (rep["order"], rep["outcome"]) == (1, "done"), rep
                    assert rep["detail"] == f"{vm} installed from image {dc.image} and started"
                    assert running(vm)
                    assert (env.cfg.state_dir / "keys" / f"{vm}.wrapped").exists()
                    listed = ctl(system_bus, "install")  # no recipe: what IT assigned here
                    assert listed.returncode == 0, listed.stderr
                    assert listed.stdout.split("\n")[1].split() == [vm, dc.image, "1", "running"]

                    # assigned again (or the order run again after a crash): not reinstalled
                    assert await admin("assign", dc.image, dc.device_name, "--recipe",
                                       str(recipe)) == 0
                    capsys.readouterr()
                    rep = (await reports(2, [plog, slog]))[-1]
                    assert (rep["order"], rep["outcome"]) == (2, "done"), rep
                    assert rep["detail"] == f"{vm} was installed already (image {dc.image} v1)"

                    assert await admin("order", dc.device_name, "unassign", f"vm={vm}") == 0
                    assert f"unassign {vm}" in capsys.readouterr().out
                    rep = (await reports(3, [plog, slog]))[-1]
                    assert (rep["order"], rep["outcome"]) == (3, "done"), rep
                    assert "removed (data key destroyed first)" in rep["detail"]
                    assert_no_leftovers(env, vm)
                    assert not (env.cfg.state_dir / "vms" / vm).exists()  # the recipe too
                    listed = ctl(system_bus, "install", "--json")
                    assert listed.returncode == 0 and json.loads(listed.stdout) == [], \
                        listed.stderr
            finally:
                client.disconnect()


MARK, MARK_AT, MARK_LEN = 0x5C, 1 << 20, 64 << 10


async def fill_while_running(vm: str, plog: Path) -> None:
    """``vm`` runs while provd still fills its disk (backed by nbdkit's export); then the
    fill is let run at full speed, and it completes: the backing chain is gone.  QEMU
    flushes at the end: until then the qcow2 metadata of what the fill wrote may be in
    its cache only, and a reader outside (:func:`read_disk`) would not see it."""
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(vm)
        backed = nbd_backed(dom.XMLDesc(0))
        assert backed, f"{vm} runs from a fully downloaded disk, not streamed"
        assert f"VM {vm} runs from snapshot" in plog.read_text()
        deadline = time.monotonic() + scaled(120)
        while nbd_backed(dom.XMLDesc(0)):
            assert time.monotonic() < deadline, plog.read_text()[-3000:]
            for dev in backed:  # provd's pull at fill_mib_s: now at full speed
                with contextlib.suppress(libvirt.libvirtError):  # (not started, or done)
                    if dom.blockJobInfo(dev, 0):
                        dom.blockJobSetSpeed(dev, 0, 0)
            await asyncio.sleep(0.2)
        while f"VM {vm}: every disk is local" not in plog.read_text():
            assert time.monotonic() < deadline, plog.read_text()[-3000:]
            await asyncio.sleep(0.2)
        hmp_write(dom, "flush")  # the pulled clusters' qcow2 metadata, for a reader outside
    finally:
        conn.close()


def read_disk(env: Env, vm: str, cmd: str) -> str:
    """``qemu-io`` on the VM's encrypted system disk, read-only and shared (it runs), opened
    with its data key as the laptop holds it (wrapped for the device key)."""
    pp = VMKeys(env.cfg.state_dir, env.device).load(vm).passphrase().decode()
    [disk] = (env.cfg.images_dir / vm).glob("system*.qcow2")
    r = run(["qemu-io", "-r", "-U", "--object", f"secret,id=s0,data={pp}", "--image-opts",
             f"driver=qcow2,file.filename={disk},encrypt.key-secret=s0", "-c", cmd],
            timeout=scaled(60))
    return r.stdout + r.stderr


async def test_the_admins_restore_alone_brings_the_vm_up_running_on_laptop_b(
        system_bus: PrivateSystemBus, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A's business VM (assigned, started, a marker written, synced over SFTP) is wiped;
    ``vmclient-admin restore VM --to laptop-b`` is all that happens for B: B's agent
    accepts the key and restores the VM through B's provd streamed: it runs while provd
    still fills its disk from the datacenter (the domain's disk still backed by nbdkit),
    and the report says so; the fill completes and the marker is in B's disk.  The order
    run again restores nothing over the running VM."""
    need_tools("dbus-daemon")
    with ssh_server() as server:
        async with provision_env(tmp_path) as env:
            dc = await datacenter(server, env, tmp_path / "admin")
            laptop_enrolment_pending(env, dc)
            admin = functools.partial(asyncio.to_thread, dc.repo.admin)
            vm = env.name("moved")
            recipe = env.recipe(tmp_path, "moved")
            recipe.write_text(recipe.read_text() + "\n[sync]\nenabled = true\nmemory = false\n")
            Peers(system_bus)

            def reports(device: str, n: int, logs: list[Path]) -> Any:
                return device_reports(admin, capsys, device, n, logs, within_s=240)

            # laptop A: assigned and started; a marker written; synced; wiped
            assert await admin("assign", dc.image, dc.device_name, "--recipe", str(recipe),
                               "--start") == 0
            capsys.readouterr()
            scratch = env.cfg.images_dir / "scratch"  # QEMU writes there; removed with it
            with provd(system_bus, env, dc, tmp_path) as plog, \
                    syncd(system_bus, env, dc, tmp_path, scratch=scratch) as slog:
                [rep] = await reports(dc.device_name, 1, [plog, slog])
                assert (rep["outcome"], running(vm)) == ("done", True), rep
                conn = libvirt.open(URI)
                try:
                    hmp_write(conn.lookupByName(vm), f"write -P {MARK:#x} {MARK_AT} {MARK_LEN}")
                finally:
                    conn.close()
                said = await asyncio.to_thread(vmclientctl, "sync", "now", vm,
                                               env=system_bus.env(), timeout=scaled(240))
                assert f"{vm}: synced, snapshot" in said.stdout, (said.stderr, slog.read_text())
                assert await admin("order", dc.device_name, "wipe", "--yes") == 0
                capsys.readouterr()
                rep = (await reports(dc.device_name, 2, [plog, slog]))[-1]
                assert (rep["order"], rep["outcome"]) == (2, "done"), rep
                assert_no_leftovers(env, vm)

            # laptop B: enrolled; the admin's restore is all that is done for it
            b_keys = DeviceKeys.load_or_create(tmp_path / "b-device")
            # a slow fill (8 MiB in ~32 s): the VM is seen running before its disk is local
            env_b = replace(env, device=b_keys, cfg=replace(
                env.cfg, state_dir=tmp_path / "b-state", device_dir=tmp_path / "b-device",
                images_dir=IMAGES / f"{env.prefix}-b", manage_dir=tmp_path / "b-manage",
                staging_dir=Path("/dev/shm") / f"{env.prefix}-b", fill_mib_s=0.25))
            account = server.add_device(b_keys.device_id())
            assert await admin("enrol", "laptop-b", "--pubkey",
                               b64(crypto.raw_public(b_keys.signing().public_key())),
                               "--wrapping-key",
                               b64(crypto.raw_public(b_keys.wrapping().public_key())),
                               "--ssh-key-pub", account.public,
                               "--server-keys", str(server.keys)) == 0
            # the same user-less location as laptop A's: B logs in as its own account
            dc_b = replace(dc, device_name="laptop-b", repository=replace(
                dc.repository, key_file=account.key_file))
            laptop_enrolment_pending(env_b, dc_b)
            capsys.readouterr()
            assert await admin("restore", vm, "--to", "laptop-b") == 0
            out = capsys.readouterr().out
            assert f"restore and start {vm} from {env.device.device_id()}" in out, out
            chown = re.search(r"^chown -R (\S+) (\S+)$", out, re.M)
            assert chown, out
            await asyncio.to_thread(run, ["chown", "-R", chown[1], chown[2]],
                                    check=True)  # as printed
            (tmp_path / "b").mkdir()
            try:
                with provd(system_bus, env_b, dc_b, tmp_path / "b") as plog, \
                        syncd(system_bus, env_b, dc_b, tmp_path / "b") as slog:
                    renewed, restored = await reports("laptop-b", 2, [plog, slog])
                    assert (renewed["order"], renewed["outcome"]) == (1, "done"), renewed
                    assert (restored["order"], restored["outcome"]) == (2, "done"), restored
                    assert restored["detail"] == (
                        f"{vm} restored from the latest snapshot of {env.device.device_id()}, "
                        "running while its disks stream in")
                    assert running(vm)
                    await fill_while_running(vm, plog)
                    got = read_disk(env_b, vm, f"read -P {MARK:#x} {MARK_AT} {MARK_LEN}")
                    assert f"read {MARK_LEN}/{MARK_LEN} bytes" in got, got
                    assert "verification failed" not in got, got
                    # the check can fail: the image's first sector is not the marker
                    assert "verification failed" in read_disk(env_b, vm,
                                                              f"read -P {MARK:#x} 0 512")

                    # the same restore again (or the order run again): not restored over it
                    assert await admin("restore", vm, "--to", "laptop-b") == 0, \
                        capsys.readouterr().err
                    capsys.readouterr()
                    rep = (await reports("laptop-b", 4, [plog, slog]))[-1]
                    assert (rep["order"], rep["outcome"]) == (4, "done"), rep
                    assert rep["detail"] == f"{vm} was restored already"
                    assert running(vm)
                    client = await MessageBus(bus_address=system_bus.address).connect()
                    try:
                        ok(await call(client, "Remove", "s", [vm]))
                    finally:
                        client.disconnect()
                    assert_no_leftovers(env_b, vm)
            finally:
                for d in (env_b.cfg.images_dir, env_b.cfg.staging_dir):
                    shutil.rmtree(d, ignore_errors=True)
