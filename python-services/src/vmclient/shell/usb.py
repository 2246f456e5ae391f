"""USB redirection (pure): which VM a USB device goes to, and when it goes by itself.

What a VM may take is the recipe's ``devices.usb`` (``none`` / ``listed`` /
``all``, docs/vm-recipes.md): provd writes it into the domain as SPICE usbredir
channels and a ``redirfilter`` (none for ``none``), QEMU enforces that filter
and sends it to spice-gtk, whose ``UsbDeviceManager`` refuses a device it
refuses (``can_redirect_device``, "blocked by host policy").  So the shell keeps
no copy of the recipe; it decides only which of the VMs' sessions gets a device,
and when:

- **By itself** (spice-gtk's ``auto-connect``, a device plugged in goes to a VM):
  only the shown VM's session, never while the screen is locked (a stick
  plugged into a locked laptop goes to no VM) or the first start is open, and
  never a keyboard or mouse (HID, class 03: the shell would lose the keys it
  needs, the hotkeys and the password).  :data:`AUTO_CONNECT_FILTER`.
- **By hand**: the bar's USB menu lists every device the host sees with where
  it is.  A free device the shown VM may take: a click connects it there; one
  in the shown VM: a click takes it out.  A device in another VM is shown as
  "in <vm>" and cannot be taken from here (take it out there first: nothing
  moves between a business and a private VM by a click on the other side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# usbredir filter rules (class, vendor, product, version, allow), first match wins:
# never a HID device, anything else (the VM's own filter from the recipe still decides).
AUTO_CONNECT_FILTER = "0x03,-1,-1,-1,0|-1,-1,-1,-1,1"


def auto_connect(vm: str, shown: str | None, locked: bool, first_start: bool) -> bool:
    """Whether ``vm``'s session takes devices plugged in now by itself."""
    return vm == shown and not locked and not first_start


@dataclass(frozen=True)
class Device:
    key: str  # the same device in every session: its description with bus and address
    name: str  # what the menu shows
    owner: str | None = None  # the VM it is redirected to
    refusal: str = ""  # why the shown VM may not take it ("" = it may)


@dataclass(frozen=True)
class Row:
    key: str
    text: str
    action: str  # "connect" (to the shown VM), "disconnect" (from it) or "" (none)


def rows(devices: Iterable[Device], shown: str | None) -> list[Row]:
    """The USB menu, by device name."""
    out = []
    for d in sorted(devices, key=lambda d: (d.name, d.key)):
        if d.owner is not None and d.owner == shown:
            out.append(Row(d.key, f"{d.name} \u2014 in {d.owner} (click: take out)",
                           "disconnect"))
        elif d.owner is not None:
            out.append(Row(d.key, f"{d.name} \u2014 in {d.owner}", ""))
        elif shown is None:
            out.append(Row(d.key, f"{d.name} \u2014 no VM shown", ""))
        elif d.refusal:
            out.append(Row(d.key, f"{d.name} \u2014 not for {shown}: {d.refusal}", ""))
        else:
            out.append(Row(d.key, f"{d.name} (click: into {shown})", "connect"))
    return out


def button_text(devices: Iterable[Device], shown: str | None) -> str:
    """The bar's USB button: how many devices the shown VM has."""
    mine = sum(1 for d in devices if shown is not None and d.owner == shown)
    return f"USB ({mine})" if mine else "USB"
