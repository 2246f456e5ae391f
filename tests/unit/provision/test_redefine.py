"""A restored VM's definition is rebuilt from its recipe, never taken from the snapshot's
XML as it is (issue 13, security point 2): what a stolen, rooted laptop plants is gone."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import PurePosixPath

import pytest

from vmclient.provision import spec
from vmclient.provision.domainxml import VM_NS, DiskBinding, domain_xml
from vmclient.provision.redefine import RestoreError, rebuild
from vmclient.virt.cpu import LAPTOP

UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
OLD_SECRET = "2b4e28ba-2fa1-11d2-883f-0016d3cca427"
NEW_SECRET = "3b4e28ba-2fa1-11d2-883f-0016d3cca427"
MAC = "52:54:00:ab:cd:ef"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
RECIPE = """format = 1
name = "office"
kind = "business"
vcpus = 2
memory_mib = 2048
[image]
catalog = "win11"
[[disks]]
name = "system"
role = "system"
[[disks]]
name = "data"
role = "user"
size_gib = 10
[network]
zone = "business"
[power]
policy = "pause"
[sync]
enabled = true
"""
NEW_DIR = PurePosixPath("/new/office")


def old_xml() -> ET.Element:
    """What laptop A defined (its MAC given by libvirt), then planted by its new root."""
    recipe = spec.parse(RECIPE, "r")
    xml = domain_xml(recipe, uuid=UUID, image_version=3, disks={
        "system": DiskBinding(PurePosixPath("/old/office/system-v3.qcow2"), OLD_SECRET),
        "data": DiskBinding(PurePosixPath("/old/office/data.qcow2"), OLD_SECRET)})
    root = ET.fromstring(xml)
    devices = root.find("devices")
    assert devices is not None
    ET.SubElement(devices.find("interface"), "mac", address=MAC)  # type: ignore[arg-type]
    hostdev = ET.SubElement(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
    ET.SubElement(ET.SubElement(hostdev, "source"), "address", domain="0x0000", bus="0x00",
                  slot="0x1f", function="0x3")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "source", file="/var/lib/vmclient/device/signing.key")
    ET.SubElement(disk, "target", dev="vdz", bus="virtio")
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value="-fw_cfg")
    ET.SubElement(cmd, f"{{{QEMU_NS}}}arg",
                  value="name=opt/k,file=/var/lib/vmclient/device/wrapping.key")
    vm = root.find(f"metadata/{{{VM_NS}}}vm")
    assert vm is not None
    vm.set("kind", "private")  # private VMs start without the lease
    return root


def meta(root: ET.Element | None = None, recipe: str = RECIPE) -> dict[str, str]:
    return {"uuid": UUID, "recipe": recipe,
            "domain": ET.tostring(old_xml() if root is None else root, encoding="unicode")}


def test_planted_devices_commandline_and_kind_are_gone_uuid_mac_and_disks_kept() -> None:
    d = rebuild("office", meta(), "snapshot 2", NEW_DIR, ["vda", "vdb"],
                secret_uuid=NEW_SECRET, cpu=LAPTOP)
    root = ET.fromstring(d.xml)
    assert root.findtext("uuid") == UUID and root.findtext("name") == "office"
    assert root.find("devices/hostdev") is None and QEMU_NS not in d.xml
    assert "signing.key" not in d.xml and "wrapping.key" not in d.xml
    vm = root.find(f"metadata/{{{VM_NS}}}vm")
    assert vm is not None and vm.get("kind") == "business" and vm.get("image-version") == "3"
    assert [m.get("address") for m in root.iterfind("devices/interface/mac")] == [MAC]
    assert [(s.get("file"), s.find("encryption/secret").get("uuid"))  # type: ignore[union-attr]
            for s in root.iterfind("devices/disk[@device='disk']/source")] == [
        ("/new/office/system-v3.qcow2", NEW_SECRET), ("/new/office/data.qcow2", NEW_SECRET)]
    assert d.files == {"vda": "system-v3.qcow2", "vdb": "data.qcow2"}
    assert d.xml == domain_xml(
        spec.parse(RECIPE.replace("zone = \"business\"", f"zone = \"business\"\nmac = \"{MAC}\""),
                   "r"), uuid=UUID, image_version=3, disks={
            "system": DiskBinding(NEW_DIR / "system-v3.qcow2", NEW_SECRET),
            "data": DiskBinding(NEW_DIR / "data.qcow2", NEW_SECRET)})


@pytest.mark.parametrize(("change", "problem"), [
    (lambda m: m.pop("recipe"), "carries no recipe"),
    (lambda m: m.update(recipe=RECIPE.replace('kind = "business"', 'kind = "private"')),
     "its recipe is not valid"),  # a private recipe with sync: the parser's rules
    (lambda m: m.update(recipe=RECIPE.replace('kind = "business"', 'kind = "private"')
                        .replace('catalog = "win11"', 'iso = "/x.iso"')
                        .replace("enabled = true", "enabled = false")
                        .replace('zone = "business"', 'zone = "private"')
                        .replace('role = "system"', 'role = "system"\nsize_gib = 5')),
     "its recipe says kind 'private': only business VMs"),
    (lambda m: m.update(recipe=RECIPE.replace('"office"', '"other"')),
     "its recipe is for VM 'other'"),
    (lambda m: m.update(uuid="x"), "is not a UUID"),
    (lambda m: m.update(domain="<domain"), "does not parse"),
    (lambda m: m.update(uuid="4b4e28ba-2fa1-11d2-883f-0016d3cca427"), "names another VM"),
])
def test_a_snapshot_whose_recipe_is_not_this_business_vm_is_refused(change, problem) -> None:  # type: ignore[no-untyped-def]
    m = meta()
    change(m)
    with pytest.raises(RestoreError, match=f"Cannot restore VM 'office': snapshot 2: .*{problem}"):
        rebuild("office", m, "snapshot 2", NEW_DIR, ["vda", "vdb"], secret_uuid=NEW_SECRET,
                cpu=LAPTOP)


def test_disks_must_be_the_recipes_and_a_mac_outside_qemus_range_is_dropped() -> None:
    with pytest.raises(RestoreError, match=r"its disks \(vda, vdb, vdz\) are not its recipe's"):
        rebuild("office", meta(), "s", NEW_DIR, ["vda", "vdb", "vdz"], secret_uuid=NEW_SECRET,
                cpu=LAPTOP)
    root = old_xml()
    root.find("devices/interface/mac").set("address", "00:11:22:33:44:55")  # type: ignore[union-attr]
    d = rebuild("office", meta(root), "s", NEW_DIR, ["vda", "vdb"], secret_uuid=NEW_SECRET,
                cpu=LAPTOP)
    assert ET.fromstring(d.xml).find("devices/interface/mac") is None  # libvirt picks one
