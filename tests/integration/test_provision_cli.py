# ruff: noqa: ASYNC220, ASYNC240, ASYNC251  (blocking checks in tests are fine)
"""``vmclientctl vm --local …`` (the core in the CLI's process): real libvirtd, exit codes.

The same commands through vmclient-provd: test_provisiond.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures_virt import scaled
from provision_env import image_bytes, need_tools, provision_env, write_config

from testlib import PYTHONPATH, vmclientctl
from vmclient.host.keys import DeviceKeys, VMKeys
from vmclient.provision import qemuimg

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()


def ctl_args(config: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    return [sys.executable, "-m", "vmclient.cli.main", "vm", "--local", "--config", str(config),
            *args], env


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return vmclientctl("vm", "--local", "--config", str(config), *args, timeout=scaled(240))


async def test_cli_install_list_start_upgrade_remove(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(48))
        config = write_config(env, tmp_path)
        recipe = env.recipe(tmp_path, "cli")
        name = env.name("cli")

        r = ctl(config, "install", str(recipe))
        assert r.returncode == 0, r.stderr
        assert "business VM, shutoff" in r.stdout
        assert "download" in r.stderr and "MiB/s" in r.stderr and "ETA" in r.stderr, r.stderr

        again = ctl(config, "install", str(recipe))
        assert again.returncode == 1 and "exists already" in again.stderr, again.stderr

        r = ctl(config, "list", "--json")
        assert r.returncode == 0, r.stderr
        (vm,) = [v for v in json.loads(r.stdout) if v["name"] == name]
        assert (vm["kind"], vm["image_version"]) == ("business", 1)

        assert ctl(config, "start", name).returncode == 0
        (line,) = [ln for ln in ctl(config, "list").stdout.splitlines() if ln.startswith(name)]
        assert line.split()[:3] == [name, "business", "running"]
        r = ctl(config, "upgrade", name)
        assert r.returncode == 1 and "stop it before upgrading" in r.stderr, r.stderr
        assert ctl(config, "stop", "--force", name).returncode == 0

        await env.dc.publish(f"{env.prefix}-img", image_bytes(48, seed=2))
        r = ctl(config, "upgrade", name)
        assert r.returncode == 0 and "version 2" in r.stdout, r.stderr

        r = ctl(config, "remove", name)  # no terminal to ask on: nothing happens
        assert r.returncode == 64 and "--yes" in r.stderr, r.stderr
        assert name in ctl(config, "list").stdout
        r = ctl(config, "remove", "--yes", name)
        assert r.returncode == 0, r.stderr
        r = ctl(config, "start", name)
        assert r.returncode == 1 and "No such VM" in r.stderr, r.stderr


async def test_install_killed_while_assembling_resumes(tmp_path: Path) -> None:
    """A power cut during assembly: no disk that looks whole; the next install finishes."""
    async with provision_env(tmp_path) as env:
        data = image_bytes(640)  # 40 MiB: several qemu-io runs of 8 MiB
        await env.dc.publish(f"{env.prefix}-img", data)
        config = write_config(env, tmp_path)
        recipe = env.recipe(tmp_path, "kill")
        name = env.name("kill")
        vm_dir = env.cfg.images_dir / name
        argv, penv = ctl_args(config, "install", str(recipe))
        proc = subprocess.Popen(argv, env=penv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not (vm_dir / ".partial-system-v1.qcow2").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert not (vm_dir / "system-v1.qcow2").exists()
        assert name not in ctl(config, "list").stdout

        r = ctl(config, "install", str(recipe))
        assert r.returncode == 0, r.stderr
        assert "0.0/0.0 MiB" in r.stderr  # every chunk came from the cache
        assert sorted(p.name for p in vm_dir.iterdir()) == ["data.qcow2", "system-v1.qcow2"]
        keys = VMKeys(env.cfg.state_dir, DeviceKeys.load_or_create(env.cfg.device_dir))
        raw = tmp_path / "img.raw"
        raw.write_bytes(data)
        assert await qemuimg.identical(vm_dir / "system-v1.qcow2", keys.load(name).passphrase(),
                                       raw)
        assert ctl(config, "remove", "--yes", name).returncode == 0


async def test_reads_create_no_state(tmp_path: Path) -> None:
    """``vm --local list`` and the assigned-VM listing read: no device keys, no directories."""
    config = tmp_path / "provision.toml"
    config.write_text("".join(f'{d} = "{tmp_path / d}"\n' for d in (
        "state_dir", "device_dir", "manage_dir", "images_dir", "media_dir", "staging_dir")))
    for args in (("list",), ("install",)):
        r = ctl(config, *args)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["provision.toml"]
