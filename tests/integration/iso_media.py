"""Installer media for tests: a minimal ISO 9660 image that boots (El Torito).

The provisioning tests boot a program that writes a word to the serial port
(``test_provision_media.boot_program``); the shell's install test boots the echo
guests' boot sector (``echo_guest.boot_sector``), which paints the screen.
"""

from __future__ import annotations

import struct

SECTOR = 2048


def el_torito_iso(boot: bytes) -> bytes:
    """A minimal ISO 9660 image whose El Torito boot entry (no emulation: the BIOS loads
    its 2048 bytes at 0:7C00) is ``boot`` (a boot sector, at most one ISO sector)."""
    assert len(boot) <= SECTOR
    total = 32
    pvd = bytearray(SECTOR)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[80:88] = struct.pack("<I", total) + struct.pack(">I", total)
    pvd[128:132] = struct.pack("<H", SECTOR) + struct.pack(">H", SECTOR)
    boot_record = bytearray(SECTOR)
    boot_record[0:7] = b"\x00CD001\x01"
    boot_record[7:39] = b"EL TORITO SPECIFICATION".ljust(32, b"\0")
    boot_record[0x47:0x4B] = struct.pack("<I", 19)  # the boot catalog's sector
    terminator = bytearray(SECTOR)
    terminator[0:7] = b"\xffCD001\x01"
    validation = bytearray(32)
    validation[0], validation[30:32] = 1, b"\x55\xaa"
    validation[4:28] = b"vmclient test".ljust(24, b"\0")
    checksum = -sum(struct.unpack("<16H", bytes(validation))) & 0xFFFF
    validation[28:30] = struct.pack("<H", checksum)
    entry = struct.pack("<BBHBBHI", 0x88, 0, 0, 0, 0, 4, 20)  # bootable, no emulation
    catalog = (bytes(validation) + entry.ljust(32, b"\0")).ljust(SECTOR, b"\0")
    image = boot.ljust(SECTOR, b"\0")
    data = bytes(16 * SECTOR) + pvd + boot_record + terminator + catalog + image
    return data.ljust(total * SECTOR, b"\0")
