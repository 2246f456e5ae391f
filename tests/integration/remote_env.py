"""Issue 7 over a real sshd: the admin runs ``vmclient-admin`` over SFTP (as root, like
the other admin tests); each laptop has its own state directory and keys, and its
agent reaches the repository only through its own confined SFTP account, set up
exactly as ``vmclient-admin enrol --accept`` prints it.  Enrolment requests go
through the enrolment drop box account (``enrol --dropbox``).

The CLI's ``main()`` runs ``asyncio.run``; the tests are async (the agent), so it
runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fixtures_sshd import Account, SSHServer, ssh_server
from fixtures_virt import IMAGES, URI, open_libvirt
from orders_env import Clock, cleanup
from sftp_repo import Repo

from vmclient.admin import keys as admin_keys
from vmclient.admin.sshd import account_name, confinement
from vmclient.host.inventory import ManageConfig
from vmclient.host.keys import ssh_identity
from vmclient.host.lease import StateFile
from vmclient.manage.agent import Agent
from vmclient.store import crypto
from vmclient.transport.sftp import SFTPStore
from vmclient.virt.libvirt import Hypervisor


@dataclass
class RemoteLaptop:
    name: str
    tmp: Path
    prefix: str
    server: SSHServer
    hv: Hypervisor
    clock: Clock = field(default_factory=Clock)

    @property
    def cfg(self) -> ManageConfig:
        return ManageConfig(state_dir=self.tmp / "manage", vm_keys_dir=self.tmp / "vmkeys",
                            images_dir=IMAGES / self.prefix / self.name,
                            name_prefix=f"{self.prefix}-",
                            business_caches=(self.tmp / "cache",),
                            vm_state_dirs=(self.tmp / "vmstate",))

    @property
    def device(self) -> str:
        return StateFile(self.cfg.state_dir).load().device

    @property
    def account(self) -> Account:
        key, pub = ssh_identity(self.cfg.device_keys_dir)
        return Account(account_name(self.device), key, pub, "")

    def store(self, **kw: Any) -> SFTPStore:
        return self.server.store(self.account, **kw)

    def agent(self, remote: Any) -> Agent:
        return Agent(self.cfg, remote, self.hv, wall=self.clock.wall, mono=self.clock.mono,
                     boot=self.clock.boot)

    async def request(self, dropbox: Account, admin_key: bytes, code: str) -> str:
        store = self.server.store(dropbox)
        try:
            return await self.agent(store).request_enrolment(admin_key, self.name, code)
        finally:
            await store.close()

    async def poll(self) -> dict[str, Any]:
        """What the agent's loop does when it reaches the datacenter, over its own account."""
        store = self.store()
        try:
            agent = self.agent(store)
            await agent.complete_enrolment()
            await agent.poll()
            return agent.status()
        finally:
            await store.close()


class Admin:
    """``vmclient-admin`` over SFTP, its output captured."""

    def __init__(self, server: SSHServer, work: Path, capsys: pytest.CaptureFixture[str]
                 ) -> None:
        self.repo, self.server, self.capsys = Repo(server, work), server, capsys
        self.out = ""

    async def __call__(self, *argv: str) -> int:
        self.capsys.readouterr()
        rc = await asyncio.to_thread(self.repo.admin_sftp, *argv)
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return rc

    @property
    def public(self) -> bytes:
        return crypto.raw_public(admin_keys.load(self.repo.key_dir).admin.public_key())

    @property
    def escrow(self) -> crypto.X25519PrivateKey:
        return admin_keys.load(self.repo.key_dir).escrow

    async def enrol(self, lap: RemoteLaptop, dropbox: Account) -> str:
        """Code → request through the drop box → accept → the printed confinement applied."""
        assert await self("enrol", "--code", lap.name) == 0, self.err
        code = self.out.splitlines()[1].strip()
        assert re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){3}", code), self.out
        await lap.request(dropbox, self.public, code)
        return await self.enrol_accepted(lap)

    async def enrol_accepted(self, lap: RemoteLaptop) -> str:
        """``enrol --accept``; the confinement it printed applied to the real sshd."""
        device = lap.device
        script = self.repo.work / f"server-setup-{device}.sh"
        assert await self("enrol", "--accept", "--server-keys", str(self.server.keys),
                          "--server-script", str(script)) == 0, self.err
        assert f"enrolled {lap.name} as device {device}" in self.out, self.out
        conf = confinement(device, lap.account.public, str(self.server.repo),
                           str(self.server.keys))
        text = script.read_text()
        assert conf.match_block in text and conf.authorized_keys in text, (text, conf)
        self.server.confine(conf)
        return device


@contextlib.asynccontextmanager
async def fleet(tmp: Path, capsys: pytest.CaptureFixture[str]
                ) -> AsyncIterator[tuple[SSHServer, Admin, Account, Hypervisor, str]]:
    """A real sshd with the drop box, an initialised repository, a libvirt connection."""
    open_libvirt().close()
    prefix = f"vmct-r{secrets.token_hex(3)}"
    with ssh_server() as server:
        dropbox = server.add_dropbox()
        admin = Admin(server, tmp, capsys)
        assert await admin("init") == 0, admin.err
        hv = Hypervisor(URI)
        await hv.connect()
        try:
            yield server, admin, dropbox, hv, prefix
        finally:
            try:
                await hv.close()
            finally:
                cleanup(prefix)
