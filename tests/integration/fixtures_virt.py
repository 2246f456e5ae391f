"""Real QEMU domains on the real libvirtd: small firmware-only guests."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt

from testlib import need, run
from vmclient.provision.cpuprobe import DEFAULT_CACHE, cached_probe, read_cache
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
    cached = read_cache(DEFAULT_CACHE)
    return cached.profile if cached is not None else None


def kvm_usable() -> bool:
    """VMs run under KVM here (with some CPU mode); else they run under TCG."""
    return cpu_profile().accelerated


def scaled(seconds: float) -> float:
    """A wait for a guest, longer under TCG."""
    return seconds if kvm_usable() else seconds * TCG_SLOWDOWN


# A boot sector whose code halts the vCPU (cli; hlt): the guest boots and idles as a real
# one does (bench/sync.py's disks start with it too).  Without it SeaBIOS polls for a
# bootable device and keeps 40 % of a core busy.
BOOT_SECTOR = bytes([0xFA, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"

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

    def create(self, suffix: str, policy: str | None = None, start: bool = True,
               persistent: bool = True, halt: bool = False) -> libvirt.virDomain:
        """``halt``: the disk boots a sector that halts the vCPU (an idle guest, as a real
        one is) instead of leaving SeaBIOS polling for a boot device (40 % of a core)."""
        name = f"{self.prefix}-{suffix}"
        IMAGES.mkdir(parents=True, exist_ok=True)
        disk = IMAGES / f"{name}.qcow2"
        if halt:
            raw = IMAGES / f"{name}.raw"
            with open(raw, "wb") as f:
                f.truncate(64 << 20)
                f.write(BOOT_SECTOR)
            run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, disk], check=True)
            raw.unlink()
        else:
            run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
        metadata = (f"<metadata><vmclient:power xmlns:vmclient='{POWER_NS}' "
                    f"policy='{policy}'/></metadata>") if policy else ""
        xml = DOMAIN_XML.format(
            virt=self.virt, name=name, uuid=uuid.uuid4(), disk=disk, metadata=metadata)
        if not persistent:  # transient: exists while it runs (no managed save for it)
            self.names.append(name)
            return self.conn.createXML(xml)
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

    def wait_idle(self, name: str, timeout: float = 60.0) -> None:
        """Until the guest's vCPU is busy < 5 % over a second (booted and halted)."""
        wait_idle(self.conn.lookupByName(name), timeout)

    def qemu_pid(self, name: str) -> int:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())

    def cleanup(self) -> None:
        """Every domain removed, all at once: a QEMU takes ~2 s to be gone here, waited
        for, not computed (three destroyed one after the other: 6 s; together: 2 s)."""
        if self.names:
            with ThreadPoolExecutor(len(self.names)) as pool:
                list(pool.map(self._remove, self.names))

    def _remove(self, name: str) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            dom = self.conn.lookupByName(name)
            with contextlib.suppress(libvirt.libvirtError, FileNotFoundError, ValueError):
                os.kill(self.qemu_pid(name), signal.SIGCONT)
            wait_started(dom)
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.managedSaveRemove(0)
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                              | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        with contextlib.suppress(FileNotFoundError):
            (IMAGES / f"{name}.qcow2").unlink()


def wait_started(dom: libvirt.virDomain, timeout: float = 30.0) -> None:
    """Until a start or restore in progress (paused, "starting up") has ended, or ``timeout``.

    libvirtd 9.0 (Debian 12) can crash when a domain is destroyed while it is being restored
    from a managed save (the restoring worker enters a monitor the destroy has freed: "Object
    cannot be NULL", then SIGSEGV in libvirt_driver_qemu.so); a test that ends while a daemon
    under test still restores its VMs must not take libvirtd down for every test after it."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            state, reason = dom.state()
        except libvirt.libvirtError:
            return
        if (state, reason) != (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP):
            return
        time.sleep(0.05)


def wait_idle(dom: libvirt.virDomain, timeout: float = 60.0) -> None:
    """Until the guest has booted and halts (its vCPU busy < 5 % over a second): SeaBIOS
    keeps a core busy for its first seconds, which would otherwise fall into whatever is
    measured first."""
    def vcpu_s() -> float:
        return sum(v[2] for v in dom.vcpus()[0]) / 1e9
    deadline = time.monotonic() + timeout
    last = vcpu_s()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = vcpu_s()
        if now - last < 0.05:
            return
        last = now
    raise RuntimeError(f"{dom.name()} still keeps its vCPU busy after {timeout:.0f} s")


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


LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"


class LibvirtdLink:
    """A relay to libvirtd's socket for a daemon under test (connect it to :attr:`uri`).

    libvirtd can then die *for that daemon* (its connections cut, new ones refused)
    and come back, while every other test on the machine keeps the real libvirtd.
    """

    def __init__(self, directory: Path, target: str = LIBVIRT_SOCKET) -> None:
        self.path = directory / "libvirt-sock"
        self.target = target
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._fail_next = False
        self._server: socket.socket | None = None
        self.listen()

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.path}"

    def listen(self) -> None:
        """libvirtd (back) up: connections are accepted and relayed."""
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(self.path))
        srv.listen(16)
        srv.settimeout(0.1)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def cut(self) -> None:
        """libvirtd gone: every connection through the link closes, new ones are refused."""
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            _shut(*pair)

    def fail_next_call(self) -> None:
        """The next request any client sends gets no answer: its connection closes (libvirtd
        dying as the call arrives)."""
        self._fail_next = True

    def close(self) -> None:
        self.cut()

    def _accept(self, srv: socket.socket) -> None:
        while self._server is srv:
            try:
                client, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.target)
            except OSError:
                _shut(client, upstream)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while data := src.recv(65536):
                if request and self._fail_next:
                    self._fail_next = False
                    break
                dst.sendall(data)
        except OSError:
            pass
        _shut(src, dst)


def _shut(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()
