"""Real QEMU domains on the real libvirtd: small firmware-only guests."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt

from testlib import need
from vmclient.provision.cpuprobe import DEFAULT_CACHE, Probe, cached_probe
from vmclient.virt.cpu import CPUProfile

URI = "qemu:///system"
IMAGES = Path("/var/lib/libvirt/images/vmclient-test")
POWER_NS = "https://vmclient.org/xmlns/power/1"


# How much longer guests take under TCG than under KVM, for the waits that scale.
TCG_SLOWDOWN = 4


@functools.cache
def cpu_profile() -> CPUProfile:
    """What this host runs VMs with, probed once by starting one as provd would
    (cached per boot in /run/vmclient, where scripts/start-daemons put it)."""
    need(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    open_libvirt().close()
    return cached_probe(URI).profile


def probed_profile() -> CPUProfile | None:
    """The profile scripts/start-daemons probed for this boot, without probing (None: not yet)."""
    try:
        return Probe.from_dict(json.loads(DEFAULT_CACHE.read_text())).profile
    except (OSError, ValueError, KeyError, TypeError):
        return None


def kvm_usable() -> bool:
    """VMs run under KVM here (with some CPU mode); else they run under TCG."""
    return cpu_profile().accelerated


def scaled(seconds: float) -> float:
    """A wait for a guest, longer under TCG."""
    return seconds if kvm_usable() else seconds * TCG_SLOWDOWN


DOMAIN_XML = """<domain type='{virt}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <graphics type='vnc' listen='127.0.0.1' autoport='yes'/>
    <memballoon model='none'/>
  </devices>
  {metadata}
</domain>
"""


class Domains:
    """Creates uniquely named domains and removes every one of them afterwards."""

    def __init__(self, conn: libvirt.virConnect, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.names: list[str] = []
        self.virt = cpu_profile().domain_type

    def create(self, suffix: str, policy: str | None = None, start: bool = True) -> libvirt.virDomain:
        name = f"{self.prefix}-{suffix}"
        IMAGES.mkdir(parents=True, exist_ok=True)
        disk = IMAGES / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
        metadata = (f"<metadata><vmclient:power xmlns:vmclient='{POWER_NS}' "
                    f"policy='{policy}'/></metadata>") if policy else ""
        xml = DOMAIN_XML.format(
            virt=self.virt, name=name, uuid=uuid.uuid4(), disk=disk, metadata=metadata)
        dom = self.conn.defineXML(xml)
        self.names.append(name)
        if start:
            dom.create()
        return dom

    def reconnect(self) -> None:
        """A new connection after libvirtd restarted."""
        self.conn = libvirt.open(URI)

    def state(self, name: str) -> int:
        return self.conn.lookupByName(name).state()[0]

    def states(self) -> dict[str, int]:
        return {n: self.state(n) for n in self.names}

    def qemu_pid(self, name: str) -> int:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())

    def cleanup(self) -> None:
        for name in self.names:
            with contextlib.suppress(libvirt.libvirtError):
                dom = self.conn.lookupByName(name)
                with contextlib.suppress(libvirt.libvirtError, FileNotFoundError, ValueError):
                    os.kill(self.qemu_pid(name), signal.SIGCONT)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                with contextlib.suppress(libvirt.libvirtError):
                    dom.managedSaveRemove(0)
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                                  | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                                  | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
            with contextlib.suppress(FileNotFoundError):
                (IMAGES / f"{name}.qcow2").unlink()


def open_libvirt() -> libvirt.virConnect:
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as exc:
        need(False, f"libvirtd does not answer on {URI} ({exc.get_error_message()}); "
                    "run scripts/start-daemons")
        raise


@contextlib.contextmanager
def domains(prefix: str) -> Iterator[Domains]:
    need(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    conn = open_libvirt()
    d = Domains(conn, prefix)
    try:
        yield d
    finally:
        d.cleanup()
        d.conn.close()
