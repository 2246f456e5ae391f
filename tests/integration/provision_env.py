"""A datacenter repository (local directory, written through store/repo.py) and a
provisioning set-up on the real libvirtd with its own networks, dirs and names."""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import libvirt
from fixtures_virt import IMAGES, URI, cpu_profile, open_libvirt

from testlib import need, run
from vmclient.host.keys import DeviceKeys
from vmclient.host.lease import StateFile, TimeRecord
from vmclient.provision.config import Networks, ProvisionConfig, Repository
from vmclient.provision.installer import Provisioner
from vmclient.provision.receiver import Receiver
from vmclient.store import crypto, layout
from vmclient.store.chunker import Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.documents import Catalog, ImageVersion, RepoConfig, WrappedKey
from vmclient.store.objects import ChunkMap, Manifest
from vmclient.store.remote import RemoteStore
from vmclient.store.repo import put_catalog, put_image_manifest, put_signed, put_wrapped_key
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import Hypervisor

K = 64 << 10


def need_tools(*extra: str, vm: bool = True) -> None:
    """What provisioning tests run on: fail in CI, skip elsewhere, when missing.

    ``vm``: the test starts VMs (under KVM or, where this host's KVM refuses
    every CPU mode, TCG: :func:`fixtures_virt.cpu_profile`)."""
    for tool in ("qemu-img", "qemu-io", "dnsmasq", *extra):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    open_libvirt().close()
    if vm:
        cpu_profile()


def image_bytes(n_chunks: int, marker: bytes = b"", seed: int = 1) -> bytes:
    """Random chunks, every fourth zero; ``marker`` repeated through chunk 1."""
    rnd = random.Random(seed)
    parts = [bytes(K) if i % 4 == 3 else rnd.randbytes(K) for i in range(n_chunks)]
    if marker:
        parts[1] = (marker * (K // len(marker) + 1))[:K]
    return b"".join(parts)


@dataclass
class Datacenter:
    root: Path
    device: DeviceKeys
    admin: crypto.Ed25519PrivateKey = field(default_factory=crypto.Ed25519PrivateKey.generate)
    repository: str = field(default_factory=lambda: secrets.token_hex(16))
    serial: int = 0
    images: dict[str, tuple[ImageVersion, ...]] = field(default_factory=dict)
    keys: dict[str, crypto.KeySet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.pinned = self.admin.public_key()  # what the laptop trusts, whoever signs later

    @property
    def store(self) -> LocalDirStore:
        return LocalDirStore(self.root)

    async def init(self) -> None:
        cfg = RepoConfig(self.repository, 0, K, crypto.raw_public(self.admin.public_key()),
                         crypto.raw_public(crypto.X25519PrivateKey.generate().public_key()))
        await put_signed(self.store, layout.CONFIG, self.admin, ("config", "config"),
                         cfg.to_bytes(), exclusive=False)

    async def publish(self, name: str, data: bytes) -> int:
        keys = self.keys.get(name)
        if keys is None:
            keys = self.keys[name] = crypto.KeySet.generate()
            w = WrappedKey.create(f"image:{name}", self.device.wrapping().public_key(), keys)
            await put_wrapped_key(self.store, layout.image_key(name, self.device.wrapping_id()),
                                  self.admin, w)
        version = len(self.images.get(name, ())) + 1
        chunks = list(Chunker(keys.chunk_id).split(data))
        cs = ChunkStore(self.store, layout.image_store(name), keys, pack_target=1 << 20)
        await cs.upload(chunks, await cs.load_index())
        disk = ChunkMap("system", "system", len(data), K, tuple(c.id for c in chunks))
        m = Manifest("image", name, str(version), version, 0, keys.check, (disk,))
        digest = await put_image_manifest(self.store, keys, m)
        self.images[name] = (*self.images.get(name, ()),
                             ImageVersion(version, digest, len(data), 0, keys.check))
        await self.sign_catalog()
        return version

    async def sign_catalog(self, serial: int | None = None) -> bytes:
        self.serial = self.serial + 1 if serial is None else serial
        await put_catalog(self.store, self.admin,
                          Catalog(self.repository, self.serial, 0, dict(self.images)))
        return (self.root / layout.CATALOG).read_bytes()

    def packs(self, name: str) -> list[Path]:
        return sorted((self.root / layout.image_store(name) / "packs").rglob("*"))


def write_config(env: Env, tmp: Path, *, pin_admin: bool = True) -> Path:
    """provd's configuration file for ``env.cfg`` (``pin_admin``: the test datacenter's
    admin key is written to ``repository.admin_key``)."""
    c, n, r = env.cfg, env.cfg.networks, env.cfg.repository
    if pin_admin:
        r.admin_key.write_bytes(crypto.raw_public(env.dc.pinned))
    path = tmp / "provision.toml"
    path.write_text(f"""libvirt_uri = "{c.libvirt_uri}"
state_dir = "{c.state_dir}"
device_dir = "{c.device_dir}"
manage_dir = "{c.manage_dir}"
images_dir = "{c.images_dir}"
media_dir = "{c.media_dir}"
staging_dir = "{c.staging_dir}"
staging_mib = 8
domain_type = "{c.domain_type}"
cpu_mode = "{c.cpu_mode}"
cpu_disable = [{", ".join(f'"{f}"' for f in c.cpu_disable)}]
fill_mib_s = {c.fill_mib_s}

[repository]
location = "{r.location}"
key_file = "{r.key_file}"
known_hosts = "{r.known_hosts}"
admin_key = "{r.admin_key}"

[networks]
business_network = "{n.business_network}"
business_bridge = "{n.business_bridge}"
business_subnet = "{n.business_subnet}"
private_network = "{n.private_network}"
private_bridge = "{n.private_bridge}"
private_subnet = "{n.private_subnet}"
""")
    return path



def set_lease(manage_dir: Path, days: float) -> None:
    """The laptop's management state: enrolled, the lease running out in ``days`` (< 0: gone)."""
    st = StateFile(manage_dir)
    now = int(time.time())
    st.save(replace(st.load(), device="test-device", enrolled=True,
                    clock=TimeRecord(now, "", 0.0), lease_until=now + int(days * 86400)))


def free_subnets(n: int) -> list[str]:
    used = run(["ip", "-4", "-o", "addr"]).stdout
    out: list[str] = []
    while len(out) < n:
        net = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}.0/24"
        prefix = net.rsplit(".", 1)[0] + "."
        if prefix not in used and net not in out:
            out.append(net)
    return out


@dataclass
class Env:
    prefix: str
    cfg: ProvisionConfig
    device: DeviceKeys
    dc: Datacenter
    hv: Hypervisor

    def provisioner(self, remote: RemoteStore | None = None, report=None,  # type: ignore[no-untyped-def]
                    max_read: int = 8 << 20) -> Provisioner:
        receiver = Receiver(remote or self.dc.store, self.dc.pinned, self.device,
                            self.cfg.state_dir, retry_delay=0.01, max_read=max_read)
        return Provisioner(self.cfg, self.hv, self.device, receiver, *([report] if report else []))

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    def recipe(self, tmp: Path, suffix: str, *, kind: str = "business", image: str = "",
               user_gib: int = 1, zone: str = "", extra: str = "") -> Path:
        name = self.name(suffix)
        source = image or f'catalog = "{self.prefix}-img"'
        zone = zone or kind
        text = f"""format = 1
name = "{name}"
kind = "{kind}"
vcpus = 1
memory_mib = 256
firmware = "bios"

[image]
{source}

[[disks]]
name = "system"
role = "system"
{extra}
[[disks]]
name = "data"
role = "user"
size_gib = {user_gib}

[network]
zone = "{zone}"

[power]
policy = "pause"
"""
        path = tmp / f"{name}.toml"
        path.write_text(text)
        return path


@contextlib.asynccontextmanager
async def provision_env(tmp: Path, staging_mib: int = 8) -> AsyncIterator[Env]:
    prefix = f"vmcp{secrets.token_hex(3)}"
    biz, priv = free_subnets(2)
    cpu = cpu_profile()
    cfg = ProvisionConfig(
        repository=Repository(str(tmp / "repo"), admin_key=tmp / "admin.pub"),
        networks=Networks(f"{prefix}-business", f"{prefix}b", biz,
                          f"{prefix}-private", f"{prefix}p", priv),
        libvirt_uri=URI, state_dir=tmp / "state", device_dir=tmp / "device",
        manage_dir=tmp / "manage",
        images_dir=IMAGES / prefix, media_dir=tmp / "media",
        staging_dir=Path("/dev/shm") / prefix, staging_mib=staging_mib,
        domain_type=cpu.domain_type, cpu_mode=cpu.cpu_mode, cpu_disable=cpu.cpu_disable)
    device = DeviceKeys.load_or_create(cfg.device_dir)
    set_lease(cfg.manage_dir, days=14)  # an enrolled laptop: business VMs may start
    dc = Datacenter(tmp / "repo", device)
    await dc.init()
    hv = Hypervisor(URI)
    await hv.connect()
    try:
        yield Env(prefix, cfg, device, dc, hv)
    finally:
        await hv.close()
        cleanup(prefix, cfg)


def cleanup(prefix: str, cfg: ProvisionConfig) -> None:
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(prefix):
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        for zone in cfg.networks.zones().values():
            with contextlib.suppress(libvirt.libvirtError):
                net = conn.networkLookupByName(zone.network)
                with contextlib.suppress(libvirt.libvirtError):
                    net.destroy()
                net.undefine()
    finally:
        conn.close()
    shutil.rmtree(cfg.images_dir, ignore_errors=True)
    shutil.rmtree(cfg.staging_dir, ignore_errors=True)


def assert_no_vm(images_dir: Path, name: str) -> None:
    """No domain ``name`` and no disks of it under ``images_dir``."""
    conn = libvirt.open(URI)
    try:
        assert name not in [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()
    assert not (images_dir / name).exists()


def assert_no_leftovers(env: Env, name: str) -> None:
    assert_no_vm(env.cfg.images_dir, name)
    assert not (env.cfg.state_dir / "keys" / f"{name}.wrapped").exists()


def ipv4(net: str, host: int) -> str:
    return str(ipaddress.IPv4Network(net).network_address + host)


__all__ = ["Datacenter", "Env", "assert_no_leftovers", "image_bytes", "ipv4", "need_tools", "provision_env",
           "set_lease", "write_config"]
