"""A private VM installed from media (the bar menu's "Install a private VM…"): the recipe
vmclient-provd gets.

Pure: the install page's values in, the recipe's TOML out, checked as provd checks
it (:func:`vmclient.provision.spec.parse`, the one definition of a recipe and of a
VM's name), so that a mistake is shown on the page in words before anything is sent.
The medium itself goes to provd as a file the shell opened (``InstallFromMedia``'s
``h``); its path in the recipe is only a label.  (``provision.spec`` is imported when a
recipe is made: it brings the repository format's crypto, memory an idle shell does
without.)

The defaults: 2 virtual CPUs, 4 GiB of memory, a 40 GiB system disk, UEFI (what
today's installers boot; "BIOS" for older systems), the private network, the power
manager's default policy (``pause``), and every USB device the person plugs in may
go to it (``usb = "all"``; the shell gives one only to the VM shown).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

MEMORY_GIB = (1, 64, 4)  # least, most, default
DISK_GIB = (1, 16384, 40)
FIRMWARE = {"uefi": "UEFI", "bios": "BIOS (older systems)"}  # the recipe's: the page's
VCPUS = 2
NAME_RULE = ("a name is 1 to 31 characters, lower-case letters, digits and '-', starting "
             "with a letter (like home or my-fedora)")


class PageError(ValueError):
    """What is wrong with the page's values, in words."""


@dataclass(frozen=True)
class NewVM:
    name: str
    media: str  # the medium's path, as the file chooser gave it
    memory_gib: int = MEMORY_GIB[2]
    disk_gib: int = DISK_GIB[2]
    firmware: str = "uefi"


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def recipe_toml(vm: NewVM, existing: Iterable[str] = ()) -> str:
    """The recipe for ``vm``; :class:`PageError` when provd would refuse it (a name it
    does not take, or one a VM has already, no medium, sizes outside their range)."""
    from ..provision import spec

    if not spec.NAME_RE.fullmatch(vm.name):
        raise PageError(f"Not a name for a VM: {vm.name!r}: {NAME_RULE}" if vm.name
                        else f"Give the VM a name: {NAME_RULE}")
    if vm.name in set(existing):
        raise PageError(f"There is a VM named {vm.name} already: choose another name")
    if not vm.media:
        raise PageError("Choose the installer (an ISO file) from your files")
    if vm.firmware not in FIRMWARE:
        raise PageError(f"Firmware {vm.firmware!r} is not one of {', '.join(FIRMWARE)}")
    for what, value, (lo, hi, _d) in (("Memory", vm.memory_gib, MEMORY_GIB),
                                      ("Disk", vm.disk_gib, DISK_GIB)):
        if not lo <= value <= hi:
            raise PageError(f"{what} of {value} GiB: choose {lo} to {hi} GiB")
    # The path is only a label (provd reads the descriptor): a name not in UTF-8 is
    # shown with replacement characters rather than refused.
    label = vm.media.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = f"""format = {spec.FORMAT}
name = "{vm.name}"
kind = "private"
description = {_toml_string("Installed from " + PurePosixPath(label).name)}
vcpus = {VCPUS}
memory_mib = {vm.memory_gib * 1024}
firmware = "{vm.firmware}"

[image]
iso = {_toml_string(label)}

[[disks]]
name = "system"
role = "system"
size_gib = {vm.disk_gib}

[network]
zone = "private"

[power]
policy = "pause"

[devices]
usb = "all"
"""
    try:
        spec.parse(text, "(the install page)")
    except spec.RecipeError as exc:
        raise PageError(str(exc)) from None
    return text
