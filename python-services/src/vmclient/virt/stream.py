"""What a streamed restore asks libvirt: the overlay's NBD backing in a definition, the
block pull that fills the overlay, the I/O-error pause.  Public libvirt API only
(``virDomainBlockPull``, ``virDomainGetBlockJobInfo``, the domain's state reason)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import libvirt

from .hypervisor import Hypervisor


def with_nbd_backing(xml: str, sockets: Mapping[str, str]) -> str:
    """``xml`` with each disk whose target is in ``sockets`` (target dev → socket path)
    backed by that raw NBD export, and with ``error_policy``/``rerror_policy='stop'``:
    an I/O error pauses the VM instead of reaching the guest."""
    root = ET.fromstring(xml)
    for disk in root.iterfind("devices/disk[@device='disk']"):
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev not in sockets:
            continue
        driver = disk.find("driver")
        if driver is None:
            driver = ET.SubElement(disk, "driver", name="qemu", type="qcow2")
        driver.set("error_policy", "stop")
        driver.set("rerror_policy", "stop")
        for old in disk.findall("backingStore"):
            disk.remove(old)
        backing = ET.Element("backingStore", type="network")
        ET.SubElement(backing, "format", type="raw")
        source = ET.SubElement(backing, "source", protocol="nbd")
        ET.SubElement(source, "host", transport="unix", socket=sockets[dev])
        ET.SubElement(backing, "backingStore")
        disk.insert(list(disk).index(disk.find("source")) + 1  # type: ignore[arg-type]
                    if disk.find("source") is not None else 0, backing)
    return ET.tostring(root, encoding="unicode")


def nbd_backed(xml: str) -> list[str]:
    """Target devs of the disks still backed by an NBD export (not filled yet)."""
    root = ET.fromstring(xml)
    out = []
    for disk in root.iterfind("devices/disk[@device='disk']"):
        target = disk.find("target")
        if disk.find("backingStore/source[@protocol='nbd']") is not None and target is not None:
            out.append(target.get("dev", ""))
    return out


@dataclass(frozen=True)
class PullState:
    active: bool  # the domain runs (or is paused)
    paused_io_error: bool  # paused because a disk read or write failed
    paused: bool  # paused for any reason (powerd before the laptop sleeps, the user, an error)
    jobs: dict[str, tuple[int, int]]  # disk → (cur, end) of its block job
    backed: list[str]  # disks still backed by NBD (live XML)


def _state(dom: Any) -> PullState:
    state, reason = dom.state(0)
    active = state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED,
                           libvirt.VIR_DOMAIN_NOSTATE)
    if not active:
        return PullState(False, False, False, {},
                         nbd_backed(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
    backed = nbd_backed(dom.XMLDesc(0))
    jobs = {}
    for dev in backed:
        info = dom.blockJobInfo(dev, 0)
        if info:
            jobs[dev] = (int(info["cur"]), int(info["end"]))
    paused = state == libvirt.VIR_DOMAIN_PAUSED
    return PullState(True, paused and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR, paused,
                     jobs, backed)


async def pull_state(hv: Hypervisor, uuid: str, name: str) -> PullState:
    return await hv.on_domain(uuid, "read the fill's state", _state, name)


async def block_pull(hv: Hypervisor, uuid: str, name: str, dev: str, bandwidth: int) -> None:
    """Start filling ``dev`` from its backing chain (``bandwidth`` bytes/s, 0: no limit);
    when the job completes QEMU drops the backing file from the image and libvirt from
    the definition."""
    flags = libvirt.VIR_DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES if bandwidth else 0
    await hv.on_domain(uuid, f"fill disk {dev}",
                       lambda d: d.blockPull(dev, bandwidth, flags), name)


async def cancel_pull(hv: Hypervisor, uuid: str, name: str, dev: str) -> None:
    """Stop filling ``dev`` (the clusters pulled so far stay in the overlay; the backing
    chain is unchanged): a later :func:`block_pull` copies only what is still missing."""
    await hv.on_domain(uuid, f"suspend the fill of disk {dev}",
                       lambda d: d.blockJobAbort(dev, 0), name)


def dac_owner(caps_xml: str, domain_type: str) -> tuple[int, int] | None:
    """uid, gid QEMU runs as (the DAC security model's base label for ``domain_type``)."""
    root = ET.fromstring(caps_xml)
    for model in root.iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for base in model.iterfind("baselabel"):
            if base.get("type") == domain_type:
                ids = re.fullmatch(r"\+?([0-9]+):\+?([0-9]+)", (base.text or "").strip())
                if ids:
                    return int(ids[1]), int(ids[2])
    return None


async def qemu_owner(hv: Hypervisor, domain_type: str) -> tuple[int, int] | None:
    caps = await hv.call(lambda conn: conn.getCapabilities(), what="read capabilities",
                         limit=30)
    return dac_owner(caps, domain_type)
