# ruff: noqa: ASYNC240  (blocking checks in tests are fine)
"""Provisioning on the real libvirtd + QEMU + qemu-img: publish (store/repo.py into a
local-directory repository) → install → start; encrypted at rest; upgrade; remove."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest
from fixtures_virt import URI
from provision_env import (
    assert_no_leftovers,
    image_bytes,
    need_tools,
    provision_env,
    set_lease,
)

from testlib import run
from vmclient.host.gate import StartRefused
from vmclient.provision import qemuimg
from vmclient.provision.cache import ChunkCache
from vmclient.provision.receiver import DownloadInterrupted

pytestmark = pytest.mark.asyncio(loop_scope="session")

MARKER = b"VMCLIENT-PLAINTEXT-MARKER-7f3a9c"


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()


def secrets_defined() -> set[str]:
    conn = libvirt.open(URI)
    try:
        return {s.UUIDString() for s in conn.listAllSecrets(0)}
    finally:
        conn.close()


async def test_install_start_encrypted_upgrade_remove(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        v1 = image_bytes(40, MARKER)
        await env.dc.publish(f"{env.prefix}-img", v1)
        events = []
        prov = env.provisioner(report=lambda p: events.append((p.phase, p.done, p.total)))
        vm = await prov.install(env.recipe(tmp_path, "biz"))
        assert (vm.kind, vm.image_version, vm.state) == ("business", 1, "shutoff")
        assert {"download", "assemble"} <= {e[0] for e in events}

        # every disk is LUKS qcow2; no plaintext of the image in the file
        keys = prov.keys.load(vm.name)
        pp = keys.passphrase()
        for path in vm.disks.values():
            info = await qemuimg.info(Path(path))
            assert info["format"] == "qcow2" and info["encrypted"] is True, info
        system = Path(vm.disks["system"])
        raw = tmp_path / "v1.raw"
        raw.write_bytes(v1)
        assert await qemuimg.identical(system, pp, raw)
        assert MARKER not in system.read_bytes()
        assert MARKER in await qemuimg.read(system, pp, 65536, 4096)
        # a marker written through the guest-visible side of the user disk
        user = Path(vm.disks["data"])
        await qemuimg.write_runs(user, pp, [(1 << 20, MARKER * 64)], tmp_path / "stage")
        assert MARKER in await qemuimg.read(user, pp, 1 << 20, 4096)
        assert MARKER not in user.read_bytes()
        # only the wrapped key is stored; it is root-only
        key_file = env.cfg.state_dir / "keys" / f"{vm.name}.wrapped"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert keys.secret not in key_file.read_bytes() and pp not in key_file.read_bytes()

        # start: the secret is private + ephemeral and gone once QEMU runs
        await prov.start(vm.name)
        assert (await prov.get(vm.name)).state == "running"
        assert vm.secret_uuid not in secrets_defined()
        await prov.stop(vm.name, force=True)

        # upgrade: v2 changes 2 of 40 chunks; only those are downloaded; user disk kept
        v2 = bytearray(v1)
        v2[5 * 65536:7 * 65536] = image_bytes(2, seed=9)
        await env.dc.publish(f"{env.prefix}-img", bytes(v2))
        events.clear()
        up = await prov.upgrade(vm.name)
        assert up.image_version == 2 and up.uuid == vm.uuid
        downloaded = max(d for p, d, _t in events if p == "download")
        assert 2 * 65536 <= downloaded <= 1.3 * 2 * 65536 + 4096, downloaded
        assert up.disks["data"] == vm.disks["data"]
        assert MARKER in await qemuimg.read(user, pp, 1 << 20, 4096)
        raw.write_bytes(bytes(v2))
        assert await qemuimg.identical(Path(up.disks["system"]), pp, raw)
        assert not system.exists()  # the v1 system disk is gone
        set_lease(env.cfg.manage_dir, days=-1)  # provd's start is the key gate too
        with pytest.raises(StartRefused, match="lease has expired"):
            await prov.start(vm.name)
        assert (await prov.get(vm.name)).state == "shutoff"
        set_lease(env.cfg.manage_dir, days=14)
        await prov.start(vm.name)
        assert (await prov.get(vm.name)).state == "running"

        await prov.remove(vm.name)
        assert_no_leftovers(env, vm.name)


async def test_private_vm_from_qcow2_and_iso(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        src = tmp_path / "mine.raw"
        src.write_bytes(image_bytes(8, MARKER))
        qcow = tmp_path / "mine.qcow2"
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", src, qcow], check=True)
        prov = env.provisioner()
        vm = await prov.install(env.recipe(tmp_path, "imp", kind="private",
                                           image=f'qcow2 = "{qcow}"'))
        pp = prov.keys.load(vm.name).passphrase()
        assert await qemuimg.identical(Path(vm.disks["system"]), pp, src)
        assert MARKER not in Path(vm.disks["system"]).read_bytes()
        iso = tmp_path / "install.iso"
        iso.write_bytes(bytes(1 << 20))
        vm2 = await prov.install(env.recipe(tmp_path, "iso", kind="private",
                                            image=f'iso = "{iso}"', extra="size_gib = 1\n"))
        xml = libvirt.open(URI).lookupByName(vm2.name).XMLDesc(0)
        copy = env.cfg.images_dir / vm2.name / "install.iso"  # provd's copy is attached
        assert "device='cdrom'" in xml and f"<source file='{copy}'" in xml
        await prov.start(vm2.name)
        await prov.start(vm.name)
        assert {(await prov.get(n)).state for n in (vm.name, vm2.name)} == {"running"}
        for n in (vm.name, vm2.name):
            await prov.remove(n)
            assert_no_leftovers(env, n)


async def test_interrupted_download_resumes(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        data = image_bytes(64)
        await env.dc.publish(f"{env.prefix}-img", data)

        class Dropping:
            """The real local-directory store; pack read number n fails if fail(n)."""

            def __init__(self, inner, fail) -> None:  # type: ignore[no-untyped-def]
                self.inner, self.fail, self.n = inner, fail, 0

            def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
                return getattr(self.inner, name)

            async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
                if "/packs/" in path:
                    self.n += 1
                    if self.fail(self.n):
                        raise ConnectionResetError("connection reset by peer")
                return await self.inner.get(path, offset, length)

        recipe = env.recipe(tmp_path, "res")
        # ranged pack reads of 256 KiB, so the download takes many reads
        with pytest.raises(DownloadInterrupted, match="connection reset"):
            await env.provisioner(Dropping(env.dc.store, lambda n: n > 2), max_read=256 << 10).install(recipe)
        assert_no_leftovers(env, env.name("res"))
        cached = len(ChunkCache(env.cfg.state_dir, f"{env.prefix}-img").ids())
        assert 0 < cached < 48
        # the connection drops twice more; retries resume, then the disk is whole
        vm = await env.provisioner(Dropping(env.dc.store, lambda n: n in (2, 4)), max_read=256 << 10).install(recipe)
        raw = tmp_path / "img.raw"
        raw.write_bytes(data)
        prov = env.provisioner()
        assert await qemuimg.identical(Path(vm.disks["system"]), prov.keys.load(vm.name).passphrase(),
                                       raw)
        await prov.remove(vm.name)
