"""A VM's install media and display: provisioning's and the shell's calls on a domain."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from ..errors import VMOperationFailed
from .hypervisor import Hypervisor


def _eject(dom: Any) -> list[str]:
    config = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    removed = []
    for cd in config.iterfind("devices/disk[@device='cdrom']"):
        src = cd.find("source")
        removed.append(src.get("file", "") if src is not None else "")
        if dom.isActive():  # the medium out of the running guest's drive (tray forced open)
            empty = ET.fromstring(ET.tostring(cd))
            for el in empty.findall("source"):
                empty.remove(el)
            dom.updateDeviceFlags(ET.tostring(empty, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE
                                  | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)
        dom.detachDeviceFlags(ET.tostring(cd, encoding="unicode"),
                              libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return removed


async def eject_media(hv: Hypervisor, uuid: str, name: str) -> list[str]:
    """Every CD-ROM drive out of the definition (its medium out at once if the VM runs).

    Returns the media that were attached (empty: there was no CD-ROM drive).
    """
    return await hv.call(lambda conn: _eject(conn.lookupByUUIDString(uuid)),
                         what="eject the install media", vm=name, limit=60)


# -- the shell: a VM's display ----------------------------------------------------

async def open_graphics_fd(hv: Hypervisor, uuid: str, name: str) -> int:
    """A new connection to the running VM's SPICE (or VNC) server, as a socket fd (ours).

    ``virDomainOpenGraphicsFD`` with SKIPAUTH: the caller was authorised by us
    (polkit), so a graphics password, if any, is not asked for.  Each SPICE
    channel of a client needs a connection of its own.
    """
    def op(conn: libvirt.virConnect) -> int:
        dom = conn.lookupByUUIDString(uuid)
        if not dom.isActive():
            raise VMOperationFailed(name, "open the display", "the VM is not running")
        return int(dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH))
    return await hv.call(op, what="open the display", vm=name, limit=30)
