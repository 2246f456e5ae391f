# ruff: noqa: ASYNC220, ASYNC251  (blocking checks in tests are fine)
"""A running provd after a wipe and a re-enrolment (issue 13 §2.5): the wipe replaced the
device's wrapping key and re-enrolment its signing key while the daemon ran; a VM it
installs next is wrapped for the new key (it opens with it), not for the shredded one."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from provision_env import image_bytes, need_tools, provision_env, write_config

from testlib import SERVICES
from vmclient.host.inventory import ManageConfig
from vmclient.host.keys import DeviceKeys
from vmclient.manage.wipe import rotate_wrapping_key
from vmclient.store import crypto, layout
from vmclient.store.documents import WrappedKey
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.repo import put_wrapped_key

pytestmark = pytest.mark.asyncio(loop_scope="session")
NAME = PATH_IFACE = "org.vmclient.VMClient1.Provisioning"
PATH = "/org/vmclient/VMClient1/Provisioning"


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools("dbus-daemon")


async def call(b: MessageBus, member: str, sig: str = "", body: list[Any] | None = None,
               dest: str = NAME, path: str = PATH, iface: str = PATH_IFACE) -> list[Any]:
    reply = await b.call(Message(destination=dest, path=path, interface=iface, member=member,
                                 signature=sig, body=body or []))
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return list(reply.body)


async def test_a_vm_installed_after_a_wipe_is_wrapped_for_the_new_device_key(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        image = f"{env.prefix}-img"
        await env.dc.publish(image, image_bytes(40))
        keys = DeviceKeys(env.cfg.device_dir)
        old_wrapping, old_device = keys.wrapping(), crypto.key_id(keys.signing().public_key())
        log_path = tmp_path / "provd.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "vmclient.provision.daemon", "--config",
                 str(write_config(env, tmp_path)), "--debug"], stdout=log,
                stderr=subprocess.STDOUT,
                env={**system_bus.env(), "PYTHONPATH": str(SERVICES / "src")})
        client = await MessageBus(bus_address=system_bus.address).connect()
        try:
            deadline = time.monotonic() + 30
            while not (await call(client, "NameHasOwner", "s", [NAME], "org.freedesktop.DBus",
                                  "/org/freedesktop/DBus", "org.freedesktop.DBus"))[0]:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.05)

            # while provd runs: the wipe's key step replaces the wrapping key, re-enrolment
            # the signing key (the same functions the agent runs)
            mcfg = ManageConfig(state_dir=env.cfg.manage_dir,
                                vm_keys_dir=env.cfg.state_dir / "keys",
                                images_dir=env.cfg.images_dir, device_dir=env.cfg.device_dir)
            rotate_wrapping_key(mcfg, kept=[])
            keys.new_identity()
            keys.ensure()
            new_wrapping = keys.wrapping()
            assert crypto.key_id(keys.signing().public_key()) != old_device
            # IT assigns the image to the re-enrolled device (its new wrapping key); the
            # entitlement of the old key stays in the repository
            new_id = crypto.key_id(new_wrapping.public_key())
            await put_wrapped_key(
                env.dc.store, layout.image_key(image, new_id), env.dc.admin,
                WrappedKey.create(f"image:{image}", new_wrapping.public_key(),
                                  env.dc.keys[image]))

            (vm,) = await call(client, "Install", "s",
                               [env.recipe(tmp_path, "after").read_text()])
            blob = (env.cfg.state_dir / "keys" / f"{vm}.wrapped").read_bytes()
            crypto.unwrap_key(new_wrapping, blob, "data-key", f"vm:{vm}")  # opens
            with pytest.raises(RemoteIntegrityError):
                crypto.unwrap_key(old_wrapping, blob, "data-key", f"vm:{vm}")
        finally:
            client.disconnect()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, log_path.read_text()
        assert "Traceback" not in log_path.read_text(), log_path.read_text()
