"""A RAUC A/B system in a temporary directory, for the host update tests.

Debian's own ``rauc`` (1.8) runs as ``rauc service`` on a private system bus with a
test ``system.conf``: two file-backed ext4 slots (A booted, B inactive), the
``custom`` bootloader backend (a shell script that records every call and keeps the
primary slot and the slot states in files), and a keyring made here with openssl.
:func:`make_bundle` builds bundles with ``rauc bundle`` from a small ext4 root.

Verity bundles need device-mapper (dm-verity) in the kernel to be installed; where
``/proc/misc`` lists no ``device-mapper`` (this kind of CI machine), the bundles the
install tests use are ``plain`` (signature over the whole squashfs) and
:func:`dm_verity` says so; a verity bundle is still built and verified with ``rauc
info``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testlib import need, stop_processes

COMPATIBLE = "vmclient-test"
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={socket}</listen><auth>EXTERNAL</auth>
 <policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
  <allow receive_type="*"/></policy></busconfig>
"""
BOOT_SCRIPT = """#!/bin/sh
# RAUC's custom bootloader backend: records each call, keeps primary and states in files
d={state}
echo "$@" >> "$d/log"
case "$1" in
  get-primary) cat "$d/primary" 2>/dev/null || echo A ;;
  set-primary) echo "$2" > "$d/primary" ;;
  get-state) cat "$d/state.$2" 2>/dev/null || echo good ;;
  set-state) echo "$3" > "$d/state.$2" ;;
  *) exit 1 ;;
esac
"""
SYSTEM_CONF = """[system]
compatible={compatible}
bootloader=custom
data-directory={dir}/rauc-data
bundle-formats=plain verity

[handlers]
bootloader-custom-backend={dir}/boot.sh

[keyring]
path={dir}/pki/ca.pem

[slot.rootfs.0]
device={dir}/slot-A.img
type=ext4
bootname=A

[slot.rootfs.1]
device={dir}/slot-B.img
type=ext4
bootname=B
"""
SLOT_SIZE = 8 << 20


def dm_verity() -> bool:
    """Can RAUC set up dm-verity here (device-mapper in the kernel)?"""
    try:
        return "device-mapper" in Path("/proc/misc").read_text()
    except OSError:
        return False


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a signing certificate under it: (ca.pem, signer.pem, signer.key)."""
    d.mkdir(parents=True, exist_ok=True)
    ca, ca_key = d / "ca.pem", d / "ca.key"
    cert, key, csr = d / "signer.pem", d / "signer.key", d / "signer.csr"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "400", "-subj",
            f"/CN={name} CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name} signer")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "400")
    return ca, cert, key


def make_rootfs(out: Path, release: str, blob: bytes, size: int = SLOT_SIZE) -> Path:
    """An ext4 root file system image with ``/etc/os-release`` naming ``release``."""
    tree = out.with_suffix(".d")
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text(f"ID=vmclient\nVERSION_ID={release}\n")
    (tree / "blob").write_bytes(blob)
    with out.open("wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-U", "clear",
                    "-T", "default", "-d", str(tree), str(out)], check=True,
                   env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"})
    shutil.rmtree(tree)
    return out


def make_bundle(out: Path, release: str, rootfs: Path, cert: Path, key: Path, ca: Path, *,
                fmt: str = "plain") -> Path:
    """``rauc bundle`` of one ext4 image, uncompressed squashfs (the repository
    compresses its chunks; an uncompressed squashfs keeps unchanged bytes in place)."""
    content = out.with_suffix(".content")
    shutil.rmtree(content, ignore_errors=True)
    content.mkdir(parents=True)
    os.link(rootfs, content / "rootfs.ext4")
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion={release}\n\n[bundle]\nformat={fmt}\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\n")
    out.unlink(missing_ok=True)
    subprocess.run(["rauc", "bundle", f"--cert={cert}", f"--key={key}", f"--keyring={ca}",
                    "--mksquashfs-args=-noI -noD -noF -noX -all-root -mkfs-time 0",
                    str(content), str(out)], check=True, capture_output=True)
    shutil.rmtree(content)
    return out


def make_unsigned(out: Path, release: str, rootfs: Path) -> Path:
    """What a bundle holds (manifest + image) as a squashfs, with no signature."""
    content = out.with_suffix(".content")
    shutil.rmtree(content, ignore_errors=True)
    content.mkdir(parents=True)
    os.link(rootfs, content / "rootfs.ext4")
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion={release}\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\n")
    out.unlink(missing_ok=True)
    subprocess.run(["mksquashfs", str(content), str(out), "-quiet", "-all-root", "-noappend",
                    "-no-progress"], check=True, capture_output=True)
    shutil.rmtree(content)
    return out


@dataclass
class RaucSystem:
    dir: Path
    env: dict[str, str]
    conf: Path
    ca: Path
    cert: Path
    key: Path

    @property
    def slot_a(self) -> Path:
        return self.dir / "slot-A.img"

    @property
    def slot_b(self) -> Path:
        return self.dir / "slot-B.img"

    def boot_log(self) -> list[str]:
        try:
            return (self.dir / "boot" / "log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def primary(self) -> str:
        try:
            return (self.dir / "boot" / "primary").read_text().strip()
        except FileNotFoundError:
            return "A"

    def service_log(self) -> str:
        return (self.dir / "service.log").read_text(errors="replace")


def _wait_for_name(env: dict[str, str], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        r = subprocess.run(["rauc", "status", "--output-format=json"], env=env,
                           capture_output=True)
        if r.returncode == 0:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"rauc service did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)


@contextlib.contextmanager
def rauc_system(d: Path) -> Iterator[RaucSystem]:
    for tool in ("rauc", "mksquashfs", "openssl", "mkfs.ext4", "dbus-daemon"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    need(os.geteuid() == 0, "RAUC's install mounts the bundle (loop device): needs root")
    need(Path("/dev/loop-control").exists(), "no loop devices")
    d.mkdir(parents=True, exist_ok=True)
    (d / "boot").mkdir()
    (d / "rauc-data").mkdir()
    (d / "mnt").mkdir()
    ca, cert, key = make_pki(d / "pki", "vmclient test")
    script = d / "boot.sh"
    script.write_text(BOOT_SCRIPT.format(state=d / "boot"))
    script.chmod(0o755)
    for slot in ("A", "B"):
        with (d / f"slot-{slot}.img").open("wb") as f:
            f.truncate(SLOT_SIZE)
    conf = d / "system.conf"
    conf.write_text(SYSTEM_CONF.format(compatible=COMPATIBLE, dir=d))
    socket = d / "bus"
    (d / "bus.conf").write_text(BUS_CONF.format(socket=socket))
    bus = subprocess.Popen(["dbus-daemon", f"--config-file={d / 'bus.conf'}", "--nofork",
                            "--nopidfile", "--print-address=1"], stdout=subprocess.PIPE,
                           stdin=subprocess.DEVNULL)
    procs: list[subprocess.Popen[bytes]] = [bus]
    try:
        assert bus.stdout is not None
        if not bus.stdout.readline():
            raise RuntimeError("dbus-daemon did not start")
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={socket}"}
        log = d / "service.log"
        with log.open("wb") as out:
            svc = subprocess.Popen(["rauc", "service", f"--conf={conf}", f"--mount={d / 'mnt'}",
                                    "--override-boot-slot=A"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        procs.insert(0, svc)
        _wait_for_name(env, svc, log)
        yield RaucSystem(d, env, conf, ca, cert, key)
    finally:
        stop_processes(procs)
