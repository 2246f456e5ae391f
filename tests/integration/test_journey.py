"""The journey as one chain (issue 14): what the admin does with ``vmclient-admin`` reaches
the laptop's daemons through the datacenter, served by the real sshd."""

from __future__ import annotations

from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_sshd import ssh_server
from journey_env import PROVD, call, datacenter, ok, provd, wait_name
from provision_env import need_tools, provision_env

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_provd_installs_from_the_sftp_repository(system_bus: PrivateSystemBus,
                                                       tmp_path: Path) -> None:
    need_tools("dbus-daemon", vm=False)
    with ssh_server() as server:
        async with provision_env(tmp_path) as env:
            dc = await datacenter(server, env, tmp_path / "admin")
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
