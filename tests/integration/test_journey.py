"""The journey as one chain (issue 14): what the admin does with ``vmclient-admin`` reaches
the laptop's daemons through the datacenter, served by the real sshd."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_sshd import ssh_server
from fixtures_virt import URI, scaled
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
from provision_env import assert_no_leftovers, need_tools, provision_env
from syncd_env import Peers

from testlib import SERVICES

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
    return subprocess.run([sys.executable, "-m", "vmclient.cli.main", "vm", *args],
                          capture_output=True, text=True, timeout=scaled(60),
                          env={**bus.env(), "PYTHONPATH": str(SERVICES / "src")})


def running(name: str) -> bool:
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).isActive())
    finally:
        conn.close()


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

            async def reports(n: int, logs: list[Path]) -> list[dict[str, Any]]:
                deadline = time.monotonic() + scaled(180)
                while True:
                    assert await admin("reports", dc.device_name, "--json") == 0
                    out = json.loads(capsys.readouterr().out)
                    if len(out) >= n:
                        return list(out)
                    assert time.monotonic() < deadline, "\n".join(p.read_text() for p in logs)
                    await asyncio.sleep(0.5)

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
