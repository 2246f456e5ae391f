"""A managed laptop for the issue-7 tests: a local-directory repository, an admin,
the device's management state, and business/private VMs with LUKS qcow2 disks on
the real libvirtd (firmware-only guests; KVM where it works)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import secrets
import shutil
import subprocess
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
from fixtures_virt import IMAGES, URI, cpu_profile, open_libvirt

from testlib import need, run
from vmclient.admin.main import main as admin_main
from vmclient.host.files import write_private
from vmclient.host.inventory import VM_NS, ManageConfig
from vmclient.host.keys import DeviceKeys
from vmclient.manage import admin as it
from vmclient.manage.agent import Agent
from vmclient.manage.enrol import CodeBook, process_requests
from vmclient.store import crypto
from vmclient.store.orders import Order
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import PBKDF_ATTEMPTS, PBKDF_BENCH_FLAKE, Hypervisor, pbkdf_retry_delay

DOMAIN_XML = """<domain type='{virt}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <metadata><vmc:vm xmlns:vmc='{ns}' kind='{kind}' recipe='{name}'/></metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'>
        <encryption format='luks'><secret type='passphrase' uuid='{secret}'/></encryption>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def qemu_io_read(disk: Path, pp: bytes) -> subprocess.CompletedProcess[str]:
    """Open a LUKS qcow2 with passphrase ``pp`` and read its first sector."""
    return run(["qemu-io", "--object", f"secret,id=s0,data={pp.decode()}", "--image-opts",
                f"driver=qcow2,file.filename={disk},encrypt.key-secret=s0", "-c", "read 0 512"])


class Clock:
    """The laptop's clocks, injected: wall (settable back), monotonic, boot id."""

    def __init__(self) -> None:
        self.wall_t = float(int(time.time()))
        self.mono_t = 1000.0
        self.boot_id = "boot-1"

    def wall(self) -> float:
        return self.wall_t

    def mono(self) -> float:
        return self.mono_t

    def boot(self) -> str:
        return self.boot_id

    def run(self, seconds: int) -> None:
        self.wall_t += seconds
        self.mono_t += seconds

    def reboot(self) -> None:
        self.boot_id = f"boot-{secrets.token_hex(2)}"
        self.mono_t = 5.0


@dataclass
class Laptop:
    prefix: str
    tmp: Path
    hv: Hypervisor
    admin: crypto.Ed25519PrivateKey
    clock: Clock = field(default_factory=Clock)
    vms: dict[str, Path] = field(default_factory=dict)  # vm -> disk

    @property
    def remote(self) -> LocalDirStore:
        return LocalDirStore(self.tmp / "repo")

    @property
    def cfg(self) -> ManageConfig:
        return ManageConfig(state_dir=self.tmp / "manage", vm_keys_dir=self.tmp / "vmkeys",
                            images_dir=IMAGES / self.prefix, name_prefix=f"{self.prefix}-",
                            business_caches=(self.tmp / "cache",),
                            vm_state_dirs=(self.tmp / "vmstate",))

    def agent(self, **kw: Any) -> Agent:
        return Agent(self.cfg, self.remote, self.hv, wall=self.clock.wall,
                     mono=self.clock.mono, boot=self.clock.boot, **kw)

    @property
    def device(self) -> str:
        return self.agent().state_file.load().device

    def name(self, suffix: str) -> str:
        return f"{self.prefix}-{suffix}"

    async def enrol(self) -> Agent:
        book = CodeBook(self.tmp / "admin" / "codes.json")
        code = book.issue("laptop-1", int(self.clock.wall()))
        agent = self.agent()
        await agent.request_enrolment(crypto.raw_public(self.admin.public_key()), "laptop-1",
                                      code)
        [outcome] = await process_requests(self.remote, self.admin, book, int(time.time()))
        assert outcome.enrolled, outcome
        assert await agent.complete_enrolment()
        return agent

    async def order(self, action: str, **args: Any) -> Order:
        return await it.issue_order(self.remote, self.admin, self.device, action, args,
                                    int(self.clock.wall()),
                                    numbers=it.OrderNumbers(self.tmp / "admin" / "orders.json"))

    async def reports(self) -> list[Any]:
        return await it.reports_of(self.remote, self.admin.public_key(), self.device)

    def create_vm(self, suffix: str, kind: str) -> str:
        """A LUKS qcow2 VM whose data key exists only wrapped for the device key.

        The i-th VM of a laptop gets the i-th template disk and key: no two VMs of
        one laptop share a key.
        """
        name = self.name(suffix)
        keys, template = luks_template(len(self.vms))
        wrapping = DeviceKeys(self.cfg.device_keys_dir).wrapping()
        self.cfg.vm_keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.cfg.vm_keys_dir / f"{name}.wrapped",
                      crypto.wrap_key(wrapping.public_key(), keys.secret, "data-key", f"vm:{name}"))
        disk = self.cfg.images_dir / name / "system.qcow2"
        disk.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, disk)
        conn = libvirt.open(URI)
        try:
            conn.defineXML(DOMAIN_XML.format(
                virt=cpu_profile().domain_type, name=name, uuid=uuidlib.uuid4(),
                ns=VM_NS, kind=kind, disk=disk, secret=uuidlib.uuid4()))
        finally:
            conn.close()
        (self.tmp / "vmstate" / name).mkdir(parents=True)
        self.vms[name] = disk
        return name


_TEMPLATES: dict[int, tuple[crypto.KeySet, Path]] = {}
_TEMPLATE_DIR = IMAGES / f"vmct-otpl-{secrets.token_hex(3)}"


def luks_template(i: int) -> tuple[crypto.KeySet, Path]:
    """A blank 64 MiB LUKS qcow2 and its key, made once per test run.

    ``qemu-img`` calibrates PBKDF2 for at least 0.5 s of CPU per LUKS key slot
    whatever ``iter-time`` says: 6-30 s per disk on a loaded two-core machine.
    """
    if i not in _TEMPLATES:
        keys = crypto.KeySet.generate()
        path = _TEMPLATE_DIR / f"{i}.qcow2"
        if not _TEMPLATES:
            _TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
            atexit.register(shutil.rmtree, _TEMPLATE_DIR, True)
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "--object",
               f"secret,id=s0,data={keys.luks.hex()}", "-o",
               "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
               str(path), "64M"]
        for attempt in range(PBKDF_ATTEMPTS):  # the calibration flake: see virt/backup.py
            r = run(cmd)
            if r.returncode == 0:
                break
            if PBKDF_BENCH_FLAKE not in r.stderr or attempt == PBKDF_ATTEMPTS - 1:
                raise AssertionError(f"qemu-img create failed: {r.stderr.strip()}")
            time.sleep(pbkdf_retry_delay(attempt))
        _TEMPLATES[i] = keys, path
    return _TEMPLATES[i]


class CLI:
    """vmclient-admin in this process on the laptop's repository (``tmp/repo``, keys in
    ``tmp/keys``); each call keeps what it printed in ``out`` and ``err``."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.capsys = tmp, capsys
        self.out = self.err = ""

    async def __call__(self, *argv: str) -> int:
        self.capsys.readouterr()
        rc = await asyncio.to_thread(admin_main, ["--repo", str(self.tmp / "repo"),
                                                  "--key-dir", str(self.tmp / "keys"), *argv])
        c = self.capsys.readouterr()
        self.out, self.err = c.out, c.err
        return rc


def dom_state(name: str) -> int | None:
    conn = libvirt.open(URI)
    try:
        return int(conn.lookupByName(name).state()[0])
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


def has_managed_save(name: str) -> bool:
    conn = libvirt.open(URI)
    try:
        return bool(conn.lookupByName(name).hasManagedSaveImage(0))
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def laptop(tmp: Path) -> AsyncIterator[Laptop]:
    for tool in ("qemu-img", "qemu-io", "qemu-system-x86_64"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    open_libvirt().close()
    prefix = f"vmct-o{secrets.token_hex(3)}"
    hv = Hypervisor(URI)
    await hv.connect()
    lap = Laptop(prefix, tmp, hv, crypto.Ed25519PrivateKey.generate())
    try:
        yield lap
    finally:
        await hv.close()
        cleanup(prefix)


def cleanup(prefix: str) -> None:
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(f"{prefix}-"):
                with contextlib.suppress(libvirt.libvirtError):
                    for sec in ET.fromstring(dom.XMLDesc(0)).iterfind(".//encryption/secret"):
                        with contextlib.suppress(libvirt.libvirtError):
                            conn.secretLookupByUUIDString(sec.get("uuid", "")).undefine()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                      | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                      | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
    finally:
        conn.close()
    shutil.rmtree(IMAGES / prefix, ignore_errors=True)
