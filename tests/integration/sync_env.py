"""The synchronizer's test world: a repository directory, two devices, real domains.

* ``Repo``: a :class:`LocalDirStore` with a ``config`` signed by a test admin key.
* ``Device``: its own state dir and keys (Ed25519 signing, X25519 wrapping); the
  second device gets a VM's data key the way ``vmclient-admin rekey`` gives it
  (unwrapped with the escrow key, wrapped for the new device).
* ``SyncVMs``: firmware-only domains with the provisioning metadata
  (``<vmc:vm kind=… sync=…/>``) and a qcow2 the test writes: offline with
  ``qemu-io``, or on the running VM through HMP ``qemu-io`` on the guest's disk
  (the writes go through QEMU's block layer, so the dirty bitmap sees them).
* The tests are coroutines on pytest-asyncio's session loop, as the rest of the
  integration tier's (libvirt's event implementation binds to one loop at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import libvirt_qemu
from fixtures_virt import IMAGES, URI, cpu_profile, open_libvirt

import testlib
from testlib import need
from vmclient.store import crypto, layout, repo
from vmclient.store.documents import RepoConfig
from vmclient.store.remote import RemoteStore
from vmclient.sync import engine, maintenance, restore
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import Hypervisor

MIB = 1 << 20
VM_NS = "https://vmclient.org/xmlns/vm/1"


AGENT_CHANNEL = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                 "</channel>")
DOMAIN_XML = """<domain type='{virt}'>
  <name>{name}</name><uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>{channel}
  </devices>
  <metadata><vmc:vm xmlns:vmc='{ns}' kind='{kind}' sync='{sync}'/></metadata>
</domain>
"""


@dataclass
class Device:
    state: Path
    signing: crypto.Ed25519PrivateKey = field(default_factory=crypto.Ed25519PrivateKey.generate)
    wrapping: crypto.X25519PrivateKey = field(default_factory=crypto.X25519PrivateKey.generate)

    @property
    def id(self) -> str:
        return crypto.key_id(self.signing.public_key())

    @property
    def signers(self) -> dict[str, crypto.Ed25519PublicKey]:
        return {self.id: self.signing.public_key()}


class World:
    def __init__(self, tmp: Path, conn: libvirt.virConnect) -> None:
        self.tmp, self.conn = tmp, conn
        self.prefix = f"vmct-s{secrets.token_hex(3)}"
        self.repo_dir = tmp / "repo"
        self.remote = LocalDirStore(self.repo_dir)
        self.admin = crypto.Ed25519PrivateKey.generate()
        self.escrow = crypto.X25519PrivateKey.generate()
        self.a, self.b = Device(tmp / "a"), Device(tmp / "b")
        self.scratch = IMAGES / f"{self.prefix}-scratch"
        self.memory_dir = Path("/dev/shm") / f"{self.prefix}-memory"  # RAM-backed
        self.names: list[str] = []
        self.keys: dict[str, crypto.KeySet] = {}
        self.hv = Hypervisor(URI)

    async def start(self) -> None:
        """The repository's signed ``config``, and the hypervisor connected."""
        cfg = RepoConfig(secrets.token_hex(16), 0, 64 << 10,
                         crypto.raw_public(self.admin.public_key()),
                         crypto.raw_public(self.escrow.public_key()))
        await repo.put_signed(self.remote, layout.CONFIG, self.admin, ("config", "config"),
                              cfg.to_bytes(), exclusive=False)
        await self.hv.connect()

    # -- domains ------------------------------------------------------------------------
    def disk(self, name: str) -> Path:
        return IMAGES / f"{name}.qcow2"

    def create(self, suffix: str, *, kind: str = "business", sync: str = "disks",
               data: Sequence[tuple[int, int, int]] = (), random_mib: int = 0,
               start: bool = True, agent: bool = False) -> libvirt.virDomain:
        """A domain whose disk holds ``random_mib`` MiB of random bytes at 8 MiB and
        ``data`` = [(pattern, offset, length)], written offline; ``agent``: with a
        guest-agent channel (as provisioned VMs have)."""
        name = f"{self.prefix}-{suffix}"
        IMAGES.mkdir(parents=True, exist_ok=True)
        testlib.run(["qemu-img", "create", "-q", "-f", "qcow2", self.disk(name), "64M"], check=True)
        if random_mib:
            raw = self.tmp / f"{name}.raw"
            with open(raw, "wb") as f:
                f.truncate(64 * MIB)
                f.seek(8 * MIB)
                f.write(os.urandom(random_mib * MIB))
            testlib.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, self.disk(name)],
                        check=True)
            raw.unlink()
        self.names.append(name)
        if data:
            qemu_io(self.disk(name), *(f"write -P {p:#x} {o} {n}" for p, o, n in data))
        dom = self.conn.defineXML(DOMAIN_XML.format(
            virt=cpu_profile().domain_type, name=name, uuid=uuid.uuid4(),
            disk=self.disk(name), ns=VM_NS, kind=kind, sync=sync,
            channel=AGENT_CHANNEL if agent else ""))
        self.keys[name] = crypto.KeySet.generate()
        if start:
            dom.create()
        return dom

    async def sync(self, dom: libvirt.virDomain, *, device: Device | None = None,
                   remote: RemoteStore | None = None,
                   hooks: engine.Hooks | None = None) -> engine.SyncResult:
        device = device or self.a
        return await engine.sync_vm(self.hv, remote or self.remote, engine.SyncJob(
            dom.UUIDString(), device.signing, self.keys[dom.name()], state_dir=device.state,
            scratch_dir=self.scratch,
            recipients=[device.wrapping.public_key(), self.escrow.public_key()],
            memory_dir=self.memory_dir), hooks)

    def child_args(self, dom: libvirt.virDomain) -> list[str]:
        """Arguments of ``sync_child.py``: the same sync as :meth:`sync`, in a process."""
        return [sys.executable, str(Path(__file__).with_name("sync_child.py")), json.dumps({
            "repo": str(self.repo_dir), "uuid": dom.UUIDString(),
            "device": crypto.raw_private(self.a.signing).hex(),
            "secret": self.keys[dom.name()].secret.hex(),
            "state": str(self.a.state), "scratch": str(self.scratch),
            "recipients": [crypto.raw_public(self.a.wrapping.public_key()).hex(),
                           crypto.raw_public(self.escrow.public_key()).hex()]})]

    async def verify(self, vm: str, snapshot: str | None = None) -> maintenance.VerifyResult:
        return await maintenance.verify(self.remote, self.a.signers, self.keys[vm],
                                        device=self.a.id, vm=vm, snapshot=snapshot)

    async def keys_for_b(self, vm: str) -> crypto.KeySet:
        """What ``rekey`` does: the escrow-wrapped data key, unwrapped, is the B device's."""
        path = layout.vm_key(self.a.id, vm, crypto.key_id(self.escrow.public_key()))
        return await repo.get_wrapped_key(self.remote, path, self.a.signers, f"vm:{vm}",
                                          self.escrow)

    async def restore_b(self, vm: str, dest: Path, snapshot: str | None = None,
                        fmt: str = "qcow2", memory: Path | None = None
                        ) -> restore.RestoreResult:
        """Restore ``vm`` on the second device into ``dest`` (and its memory image)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        where = {"vda": dest, **({"memory": memory} if memory else {})}
        return await restore.restore_vm(self.remote, self.a.signers, await self.keys_for_b(vm),
                                        device=self.a.id, vm=vm, dest=where,
                                        snapshot=snapshot, fmt=fmt)

    async def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            await self.hv.close()
        with contextlib.suppress(libvirt.libvirtError):  # a new one: libvirtd may have restarted
            self.conn.close()
        self.conn = libvirt.open(URI)
        for name in self.names:
            with contextlib.suppress(libvirt.libvirtError):
                dom = self.conn.lookupByName(name)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
                                  | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
            self.disk(name).unlink(missing_ok=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        shutil.rmtree(self.memory_dir, ignore_errors=True)
        self.conn.close()


def qemu_io(disk: Path, *cmds: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        args += ["-c", c]
    testlib.run([*args, disk], check=True)


def hmp_write(dom: libvirt.virDomain, cmd: str) -> None:
    """``qemu-io`` inside the running QEMU, on the guest's disk (seen by dirty bitmaps).

    Followed by a flush, so that ``qemu-img compare -U`` from outside sees the
    qcow2 metadata QEMU would otherwise still cache.
    """
    for c in (cmd, "flush"):
        out = libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend "{c}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        assert not out.strip(), out


def same_content(a: Path, b: Path) -> bool:
    """Guest-visible equality (``qemu-img compare``; -U: a running VM holds ``a``)."""
    r = testlib.run(["qemu-img", "compare", "-U", a, b])
    assert r.returncode in (0, 1), r.stderr
    return r.returncode == 0


def repo_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@contextlib.asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[World]:
    need(shutil.which("qemu-img") is not None and shutil.which("qemu-io") is not None,
         "qemu-utils is not installed")
    need(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    w = World(tmp, open_libvirt())
    try:
        await w.start()
        yield w
    finally:
        await w.cleanup()


__all__ = ["MIB", "World", "hmp_write", "os", "qemu_io", "repo_bytes", "same_content", "world"]
