# ruff: noqa: ASYNC251, ASYNC240  (blocking checks in tests are fine)
"""The journey's datacenter and laptop: a repository behind the real sshd, built with
``vmclient-admin``; provd (and syncd) started on the private system bus with the
configuration a laptop ships, their ``[repository]`` the shipped ``sftp://host/`` URL
(no user: the device's own account, named from the device id in its management state)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_sshd import SSHServer
from provd_harness import NAME, PATH, call, ok
from provision_env import Env, write_config
from sftp_repo import Repo, b64, make_disk, qcow2

from testlib import SERVICES
from vmclient.host.keys import pin_admin_key
from vmclient.host.lease import DeviceState, StateFile
from vmclient.store import crypto
from vmclient.transport import Repository

PROVD, PROVD_PATH = NAME, PATH
DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


@dataclass
class Datacenter:
    repo: Repo
    device_name: str
    image: str
    repository: Repository  # the laptop's [repository] section


async def datacenter(server: SSHServer, env: Env, work: Path, device_name: str = "laptop",
               mib: int = 8) -> Datacenter:
    """``vmclient-admin init``, ``publish <prefix>-img``, ``enrol`` the laptop's device
    keys (confined as enrol prints it), ``assign`` the image to it (no order yet)."""
    return await asyncio.to_thread(_datacenter, server, env, work, device_name, mib)


def _datacenter(server: SSHServer, env: Env, work: Path, device_name: str, mib: int
                ) -> Datacenter:
    work.mkdir(parents=True, exist_ok=True)
    repo = Repo(server, work)
    assert repo.admin("init") == 0
    image = f"{env.prefix}-img"
    assert repo.admin("publish", image, str(qcow2(make_disk(work / "disk.raw", mib)))) == 0
    account = server.add_device(env.device.device_id())
    assert repo.admin("enrol", device_name, "--pubkey",
                      b64(crypto.raw_public(env.device.signing().public_key())),
                      "--wrapping-key", b64(crypto.raw_public(env.device.wrapping().public_key())),
                      "--ssh-key-pub", account.public, "--server-keys", str(server.keys)) == 0
    assert repo.admin("assign", image, device_name) == 0
    admin_key = work / "admin-key.pub"
    admin_key.write_bytes(crypto.raw_public(repo.admin_public))
    # the location as the image ships it, naming no account: the laptop logs in as its
    # own (account.user, vmc-<device id>) once its state holds its device id
    # (laptop_enrolment_pending, as vmclientctl enrol leaves it)
    return Datacenter(repo, device_name, image, Repository(
        f"sftp://127.0.0.1:{server.port}/", key_file=account.key_file,
        known_hosts=server.known_hosts, admin_key=admin_key))


@contextlib.contextmanager
def provd(bus: PrivateSystemBus, env: Env, dc: Datacenter, tmp: Path) -> Iterator[Path]:
    """vmclient-provd with ``env``'s configuration and ``dc``'s repository; its log."""
    env.cfg = replace(env.cfg, repository=dc.repository)
    config = write_config(env, tmp, pin_admin=False)
    with _daemon(bus, "vmclient.provision.daemon", config, tmp / "provd.log", 10) as log:
        yield log


async def wait_name(b: MessageBus, name: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while not ok(await call(b, "NameHasOwner", "s", [name], *DBUS))[0]:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


def laptop_enrolment_pending(env: Env, dc: Datacenter) -> None:
    """The laptop's management state after ``vmclientctl enrol``: its device id and the
    pinned admin key; syncd completes the enrolment when it reads the device record."""
    StateFile(env.cfg.manage_dir).save(DeviceState(device=env.device.device_id()))
    pin_admin_key(env.cfg.manage_dir, crypto.raw_public(dc.repo.admin_public))


@contextlib.contextmanager
def syncd(bus: PrivateSystemBus, env: Env, dc: Datacenter, tmp: Path, manage_extra: str = "",
          wrap: Callable[[list[str]], list[str]] = lambda cmd: cmd,
          scratch: Path | None = None) -> Iterator[Path]:
    """vmclient-syncd hosting the management agent, sharing provd's directories and
    ``[repository]``; a cycle every 2 s; its log.  Needs :class:`syncd_env.Peers`.
    ``manage_extra``: more of its ``[manage]`` section; ``wrap``: its command line as run;
    ``scratch``: its scratch directory (one QEMU can write, for a running VM's sync)."""
    c, r = env.cfg, dc.repository
    config = tmp / "sync.toml"
    config.write_text(f"""libvirt_uri = "{c.libvirt_uri}"
state_dir = "{tmp / 'sync'}"
provision_dir = "{c.state_dir}"
device_dir = "{c.device_dir}"
scratch_dir = "{scratch or tmp / 'scratch'}"
memory_dir = "{tmp / 'memory'}"
name_prefix = "{env.prefix}-"

[repository]
location = "{r.location}"
key_file = "{r.key_file}"
known_hosts = "{r.known_hosts}"
admin_key = "{r.admin_key}"

[schedule]
enabled = false
recheck_seconds = 2

[host_updates]
enabled = false

[manage]
state_dir = "{c.manage_dir}"
images_dir = "{c.images_dir}"
""" + manage_extra)
    with _daemon(bus, "vmclient.sync.daemon", config, tmp / "syncd.log", 30, wrap) as log:
        yield log


@contextlib.contextmanager
def _daemon(bus: PrivateSystemBus, module: str, config: Path, log_path: Path,
            stop_s: float, wrap: Callable[[list[str]], list[str]] = lambda cmd: cmd
            ) -> Iterator[Path]:
    """``python -m module --config config --debug`` on the private bus, logging to
    ``log_path``; SIGTERM at the end, SIGKILL after ``stop_s`` seconds."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            wrap([sys.executable, "-m", module, "--config", str(config), "--debug"]),
            stdout=log, stderr=subprocess.STDOUT,
            env={**bus.env(), "PYTHONPATH": str(SERVICES / "src")})
    try:
        yield log_path
    finally:
        proc.terminate()
        try:
            proc.wait(stop_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
