"""Recipe → libvirt domain XML, as a pure function (tested on its own).

The domain gets:
* every disk as qcow2 with LUKS encryption whose passphrase is the libvirt
  secret named by UUID (the secret's value, derived from the VM's data key, is
  handed to libvirt as a private, ephemeral secret at start; never stored here);
* one virtio NIC on the zone's network (``vmclient-business`` or
  ``vmclient-private``; zone ``none`` has no NIC), with libvirt's
  ``clean-traffic`` nwfilter unless ``anti_spoofing`` is off (no MAC, IP or
  ARP spoofing; the IP is learnt from the guest's first packets/DHCP);
* the power manager's per-VM policy as
  ``<metadata><vmclient:power xmlns:vmclient="https://vmclient.org/xmlns/power/1"
  policy="…"/></metadata>`` (fixed namespace and element: the power manager reads them)
  and the VM's identity in ``<vmc:vm xmlns:vmc="https://vmclient.org/xmlns/vm/1" …/>``;
* a guest-agent channel (S3 policy, clock re-sync after resume) and, if the
  USB policy allows, SPICE USB redirection limited by a ``redirfilter``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..virt.cpu import LAPTOP, CPUProfile
from .spec import Recipe

POWER_NS = "https://vmclient.org/xmlns/power/1"
VM_NS = "https://vmclient.org/xmlns/vm/1"
NETWORKS = {"business": "vmclient-business", "private": "vmclient-private"}
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_BUS_PREFIX = {"virtio": "vd", "sata": "sd"}


@dataclass(frozen=True)
class DiskBinding:
    """Where a recipe disk lives on this laptop and which secret unlocks it."""

    path: PurePosixPath
    secret_uuid: str


def domain_xml(recipe: Recipe, *, uuid: str, disks: Mapping[str, DiskBinding],
               install_media: PurePosixPath | None = None, image_version: int = 0,
               networks: Mapping[str, str] = NETWORKS, anti_spoofing: bool = True,
               cpu: CPUProfile = LAPTOP) -> str:
    """The domain definition for ``recipe``.

    ``install_media`` attaches an ISO as a CD-ROM booted after the (blank) system
    disk; ``image_version`` is the catalog version actually installed (the recipe
    may say "newest"); ``networks`` maps a zone to its libvirt network
    (configurable, so tests use their own); ``cpu`` the domain type and CPU model
    (:mod:`vmclient.virt.cpu`: KVM with the host's CPU on a laptop).
    """
    for value in (uuid, *(b.secret_uuid for b in disks.values())):
        if not _UUID_RE.fullmatch(value):
            raise ValueError(f"not a lower-case UUID: {value!r}")
    missing = sorted({d.name for d in recipe.disks} - set(disks))
    if missing or len(disks) != len(recipe.disks):
        raise ValueError(f"disk bindings do not match the recipe's disks (missing {missing})")

    dom = ET.Element("domain", type=cpu.domain_type)
    _text(dom, "name", recipe.name)
    _text(dom, "uuid", uuid)
    _text(dom, "title", f"{recipe.name} ({recipe.kind})")
    if recipe.description:
        _text(dom, "description", recipe.description)
    _metadata(dom, recipe, image_version or recipe.image.version)
    _text(dom, "memory", str(recipe.memory_mib), unit="MiB")
    _text(dom, "currentMemory", str(recipe.memory_mib), unit="MiB")
    _text(dom, "vcpu", str(recipe.vcpus), placement="static")
    os_el = ET.SubElement(dom, "os", firmware="efi") if recipe.firmware == "uefi" else \
        ET.SubElement(dom, "os")
    _text(os_el, "type", "hvm", arch="x86_64", machine="q35")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    cpu_el = ET.SubElement(dom, "cpu", mode=cpu.cpu_mode, check="none")
    for feature in cpu.cpu_disable:
        ET.SubElement(cpu_el, "feature", policy="disable", name=feature)
    ET.SubElement(dom, "clock", offset="utc")
    for event, action in (("on_poweroff", "destroy"), ("on_reboot", "restart"),
                          ("on_crash", "destroy")):
        _text(dom, event, action)
    pm = ET.SubElement(dom, "pm")
    ET.SubElement(pm, "suspend-to-mem", enabled="yes" if recipe.power == "s3" else "no")
    ET.SubElement(pm, "suspend-to-disk", enabled="no")
    _devices(ET.SubElement(dom, "devices"), recipe, disks, install_media, networks,
             anti_spoofing)
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    el.text = text
    return el


def _metadata(dom: ET.Element, recipe: Recipe, image_version: int) -> None:
    meta = ET.SubElement(dom, "metadata")
    # literal prefixes: ElementTree would otherwise invent ns0/ns1
    ET.SubElement(meta, "vmclient:power", {"xmlns:vmclient": POWER_NS, "policy": recipe.power})
    image = recipe.image
    ET.SubElement(meta, "vmc:vm", {
        "xmlns:vmc": VM_NS, "kind": recipe.kind, "recipe": recipe.name,
        "source": image.source,
        "image": image.catalog or str(image.media),
        "image-version": str(image_version) if image.catalog and image_version else "",
        "sync": "memory" if recipe.sync.memory else "disks" if recipe.sync.enabled else "off",
        "usb": recipe.devices.usb})


def _devices(devices: ET.Element, recipe: Recipe, disks: Mapping[str, DiskBinding],
             install_media: PurePosixPath | None, networks: Mapping[str, str],
             anti_spoofing: bool) -> None:
    used = {"vd": 0, "sd": 0}

    def target(bus: str) -> str:
        prefix = _BUS_PREFIX[bus]
        dev = prefix + "abcdefghijklmnopqrstuvwxyz"[used[prefix]]
        used[prefix] += 1
        return dev

    if install_media is not None:
        # Booted *after* the system disk: a blank disk does not boot, so the firmware
        # falls through to the installer; once installed, the disk boots first.
        cd = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cd, "driver", name="qemu", type="raw")
        ET.SubElement(cd, "source", file=str(install_media))
        ET.SubElement(cd, "target", dev=target("sata"), bus="sata")
        ET.SubElement(cd, "readonly")
        ET.SubElement(cd, "boot", order="2")
    for disk in sorted(recipe.disks, key=lambda d: d.role != "system"):
        binding = disks[disk.name]
        el = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(el, "driver", name="qemu", type="qcow2", cache="none", io="native",
                      discard="unmap")
        source = ET.SubElement(el, "source", file=str(binding.path))
        enc = ET.SubElement(source, "encryption", format="luks")
        ET.SubElement(enc, "secret", type="passphrase", uuid=binding.secret_uuid)
        ET.SubElement(el, "target", dev=target(disk.bus), bus=disk.bus)
        _text(el, "serial", f"vmclient-{disk.name}")
        if disk.role == "system":
            ET.SubElement(el, "boot", order="1")
    if recipe.zone in NETWORKS:
        nic = ET.SubElement(devices, "interface", type="network")
        if recipe.mac:
            ET.SubElement(nic, "mac", address=recipe.mac)
        ET.SubElement(nic, "source", network=networks[recipe.zone])
        ET.SubElement(nic, "model", type="virtio")
        if anti_spoofing:
            ET.SubElement(nic, "filterref", filter="clean-traffic")
    ET.SubElement(devices, "controller", type="usb", model="qemu-xhci")
    ET.SubElement(devices, "input", type="tablet", bus="usb")
    _usb_redirection(devices, recipe)
    agent = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(agent, "target", type="virtio", name="org.qemu.guest_agent.0")
    graphics = ET.SubElement(devices, "graphics", type="spice")
    ET.SubElement(graphics, "listen", type="none")
    # Sound through SPICE: the shell plays every VM and gives the microphone to the
    # shown VM only (docs/shell.md, "Audio"); there is no other audio backend.
    sound = ET.SubElement(devices, "sound", model="ich9")
    ET.SubElement(sound, "audio", id="1")
    ET.SubElement(devices, "audio", id="1", type="spice")
    video = ET.SubElement(devices, "video")
    ET.SubElement(video, "model", type="virtio")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    ET.SubElement(devices, "memballoon", model="virtio")


def _usb_redirection(devices: ET.Element, recipe: Recipe) -> None:
    """USB policy: no redirection channel at all for ``none``; a filter for ``listed``."""
    policy = recipe.devices
    if policy.usb == "none":
        return
    for _ in range(2):
        ET.SubElement(devices, "redirdev", bus="usb", type="spicevmc")
    flt = ET.SubElement(devices, "redirfilter")
    for usb_id in policy.usb_allow:
        vendor, product = usb_id.split(":")
        ET.SubElement(flt, "usbdev", vendor=f"0x{vendor}", product=f"0x{product}", allow="yes")
    ET.SubElement(flt, "usbdev", allow="yes" if policy.usb == "all" else "no")
