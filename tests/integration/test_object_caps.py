"""Servers that claim or return oversize objects (issue 13 §2.6): an SFTP server's 5 GiB
order is refused after reading the cap and a byte; a laptop refuses and reports an
oversize order instead of reading it."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from fixtures_sshd import SSHServer
from orders_env import laptop

from vmclient.store import crypto, layout, repo
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.remote import MAX_OBJECT

MiB, GiB = 1 << 20, 1 << 30
DEVICE = "0123456789abcdef0123456789abcdef"
pytestmark = pytest.mark.asyncio(loop_scope="session")


def sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


async def test_an_sftp_server_claiming_5_gib_gets_the_cap_and_a_byte_read(
        sshd: SSHServer) -> None:
    path = layout.order(DEVICE, 1)
    sparse(sshd.repo / path, 5 * GiB)
    admin = crypto.Ed25519PrivateKey.generate().public_key()
    store = sshd.store(sshd.admin)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteIntegrityError) as exc:
            await repo.get_signed(store, path, {crypto.key_id(admin): admin}, "order",
                                  f"{DEVICE}/1")
        most = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        await store.close()
    err = exc.value
    assert err.obj_type == "order" and err.path == path
    assert f"larger than the {MAX_OBJECT['order']} bytes" in str(err)
    assert most < 3 * MAX_OBJECT["order"], most


async def test_a_laptop_refuses_and_reports_an_oversize_order_unread(tmp_path: Path) -> None:
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        path = layout.order(lap.device, 1)
        sparse(lap.tmp / "repo" / path, 2 * GiB)
        await agent.poll()
        assert agent.state_file.load().last_seq == 0
        [rep] = await lap.reports()
        assert rep.outcome == "refused" and rep.order == 0
        assert path in rep.detail and "larger than" in rep.detail, rep
        await agent.poll()  # reported once
        assert len(await lap.reports()) == 1
