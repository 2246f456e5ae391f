"""Install media of a private VM on the real libvirtd + QEMU (SeaBIOS): the installer boots
from the ISO while the system disk is blank, the installed disk boots first although the ISO
is still attached, ``eject`` takes it out (live and from the definition), and provd's start
ejects it by itself once the install has written the disk.

The "installer" and the "installed system" are two tiny boot programs that write a word to
the first serial port: an El Torito (no emulation) ISO (iso_media.py), and a boot sector
written into the LUKS system disk through qemu-io."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from fixtures_virt import URI
from iso_media import el_torito_iso
from provision_env import Env, need_tools, provision_env

from vmclient.provision import qemuimg
from vmclient.provision.installer import Provisioner

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()


def boot_program(word: bytes) -> bytes:
    """Real-mode x86: write ``word`` + newline to COM1 (0x3f8), then halt for good."""
    code = b"\xfa\xba\xf8\x03"  # cli; mov dx, 0x3f8
    code += b"".join(b"\xb0" + bytes([c]) + b"\xee" for c in word + b"\n")  # mov al, c; out
    code += b"\xf4\xeb\xfd"  # hlt; jmp $-1
    return code.ljust(510, b"\0") + b"\x55\xaa"


def with_serial_log(name: str, log: Path) -> None:
    """Add a serial port writing to ``log`` to the (shut-off) domain's definition."""
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(name)
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        serial = ET.SubElement(root.find("devices"), "serial", type="file")  # type: ignore[arg-type]
        ET.SubElement(serial, "source", path=str(log))
        ET.SubElement(serial, "target", port="0")
        conn.defineXML(ET.tostring(root, encoding="unicode"))
    finally:
        conn.close()


def cdroms(name: str, flags: int = 0) -> list[str | None]:
    """The CD-ROM drives of the live (or, with the flag, the stored) definition: their media."""
    conn = libvirt.open(URI)
    try:
        root = ET.fromstring(conn.lookupByName(name).XMLDesc(flags))
    finally:
        conn.close()
    return [None if (s := d.find("source")) is None else s.get("file")
            for d in root.iterfind("devices/disk[@device='cdrom']")]


def booted(log: Path) -> str:
    """The first word the guest wrote to its serial port (QEMU truncates it at each start)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "\n" in text:
            return text.split("\n")[0].strip()
        time.sleep(0.1)
    raise AssertionError(f"the guest wrote nothing to {log} within 60 s")


async def install_from_iso(env: Env, prov: Provisioner, tmp: Path, suffix: str,
                           iso: Path) -> tuple[str, Path]:
    vm = await prov.install(env.recipe(tmp, suffix, kind="private", image=f'iso = "{iso}"',
                                       extra="size_gib = 1\n"))
    log = env.cfg.images_dir / vm.name / "serial.log"
    with_serial_log(vm.name, log)
    return vm.name, log


async def write_installed_system(prov: Provisioner, name: str, tmp: Path) -> None:
    """What an installer leaves: a bootable first sector on the system disk."""
    vm = await prov.get(name)
    await qemuimg.write_runs(Path(vm.disks["system"]), prov.keys.load(name).passphrase(),
                             [(0, boot_program(b"DISK"))], tmp / "stage")


async def test_installer_boots_then_the_installed_disk_and_the_media_goes(
        tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        iso = tmp_path / "installer.iso"  # the user's: QEMU gets provd's copy
        iso.write_bytes(el_torito_iso(boot_program(b"CDROM")))
        prov = env.provisioner()
        name, log = await install_from_iso(env, prov, tmp_path, "iso", iso)
        copy = str(env.cfg.images_dir / name / "install.iso")

        # first start: the blank system disk does not boot, the installer does
        await prov.start(name)
        assert booted(log) == "CDROM"
        assert (await prov.get(name)).media == (copy,)  # nothing installed yet: kept
        await prov.stop(name, force=True)

        # installed: the disk boots first, although the ISO is still in the drive
        await write_installed_system(prov, name, tmp_path)
        log.unlink()
        vm = await prov.get(name)
        await prov.gate.start(vm.uuid, name)  # the plain start, without provd's ejection
        assert booted(log) == "DISK"
        assert cdroms(name) == [copy]

        # vmclientctl vm eject on the running VM: medium out now, drive out of the definition
        assert await prov.eject(name) == (copy,)
        assert cdroms(name) == [None]
        assert cdroms(name, libvirt.VIR_DOMAIN_XML_INACTIVE) == []
        assert await prov.eject(name) == ()  # nothing left to eject
        await prov.stop(name, force=True)
        log.unlink()
        await prov.start(name)
        assert booted(log) == "DISK" and cdroms(name) == []
        await prov.remove(name)


async def test_provd_start_ejects_the_media_once_the_disk_is_installed(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        iso = tmp_path / "installer.iso"
        iso.write_bytes(el_torito_iso(boot_program(b"CDROM")))
        prov = env.provisioner()
        name, log = await install_from_iso(env, prov, tmp_path, "auto", iso)
        await write_installed_system(prov, name, tmp_path)  # the installer ran and shut down
        await prov.start(name)
        assert booted(log) == "DISK"
        assert (await prov.get(name)).media == ()
        assert cdroms(name) == [] and cdroms(name, libvirt.VIR_DOMAIN_XML_INACTIVE) == []
        assert iso.exists()  # the user's file stays; provd's copy goes
        assert not (env.cfg.images_dir / name / "install.iso").exists()
        await prov.remove(name)
