"""Recipe → domain XML: the elements the power manager, libvirt and isolation rely on."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest

from testlib import need, run
from vmclient.provision import spec
from vmclient.provision.domainxml import (
    NETWORKS,
    POWER_NS,
    VM_NS,
    DiskBinding,
    domain_xml,
)
from vmclient.virt.cpu import CPUProfile

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
UUID = "6f1c2a9e-4d0b-4c1e-9a57-0c3f2b1d8e70"
NS = {"vmclient": POWER_NS, "vmc": VM_NS}


def secret(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


def build(name: str, **kw: object) -> tuple[spec.Recipe, ET.Element, str]:
    recipe = spec.load(RECIPES / name / "recipe.toml")
    disks = {d.name: DiskBinding(PurePosixPath(f"/var/lib/vmclient/vms/{name}/{d.name}.qcow2"),
                                 secret(i)) for i, d in enumerate(recipe.disks)}
    text = domain_xml(recipe, uuid=UUID, disks=disks, **kw)  # type: ignore[arg-type]
    return recipe, ET.fromstring(text), text


def test_power_policy_is_in_the_fixed_metadata_namespace() -> None:
    _r, dom, text = build("office", image_version=5)
    power = dom.find("metadata/vmclient:power", NS)
    assert power is not None and power.get("policy") == "s3"
    assert '<vmclient:power xmlns:vmclient="https://vmclient.org/xmlns/power/1"' in text
    vm = dom.find("metadata/vmc:vm", NS)
    assert vm is not None
    assert (vm.get("kind"), vm.get("image"), vm.get("image-version"), vm.get("sync")) == \
        ("business", "win11-office", "5", "memory")


def test_every_disk_is_luks_qcow2_with_its_own_secret() -> None:
    recipe, dom, _ = build("office")
    disks = dom.findall("devices/disk[@device='disk']")
    assert len(disks) == len(recipe.disks) == 2
    for i, disk in enumerate(disks):
        assert disk.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
        enc = disk.find("source/encryption")
        assert enc is not None and enc.get("format") == "luks"
        sec = enc.find("secret")
        assert sec is not None and (sec.get("type"), sec.get("uuid")) == ("passphrase", secret(i))
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert disks[0].find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert disks[1].find("boot") is None


@pytest.mark.parametrize(("name", "network"), [("office", "vmclient-business"),
                                               ("private-desktop", "vmclient-private")])
def test_vm_joins_only_its_zone_network(name: str, network: str) -> None:
    _r, dom, _ = build(name)
    sources = [i.find("source").get("network")  # type: ignore[union-attr]
               for i in dom.findall("devices/interface")]
    assert sources == [network]
    assert set(NETWORKS.values()) == {"vmclient-business", "vmclient-private"}


def test_nic_carries_the_clean_traffic_filter_unless_turned_off() -> None:
    _r, dom, _ = build("office")
    [ref] = dom.findall("devices/interface/filterref")
    assert ref.get("filter") == "clean-traffic" and ref.findall("parameter") == []
    _r, plain, _ = build("office", anti_spoofing=False)
    assert plain.findall("devices/interface/filterref") == []


def test_zone_none_has_no_interface_and_bios_has_no_efi() -> None:
    _r, dom, _ = build("private-import")
    assert dom.findall("devices/interface") == []
    assert dom.find("os").get("firmware") is None  # type: ignore[union-attr]


def test_iso_install_attaches_readonly_cdrom_booted_after_the_system_disk() -> None:
    recipe, dom, _ = build("private-desktop", install_media=PurePosixPath("/m/f.iso"))
    assert recipe.image.iso is not None
    cd = dom.find("devices/disk[@device='cdrom']")
    assert cd is not None and cd.find("readonly") is not None
    assert cd.find("source").get("file") == "/m/f.iso"  # type: ignore[union-attr]
    # the blank system disk does not boot, so the firmware falls through to the CD;
    # once the installer has written it, the installed system boots, not the installer
    system = dom.find("devices/disk[@device='disk']")
    assert system.find("boot").get("order") == "1"  # type: ignore[union-attr]
    assert cd.find("boot").get("order") == "2"  # type: ignore[union-attr]
    assert [b.get("order") for b in dom.iter("boot")] == ["2", "1"]  # one each, no os/boot


def test_usb_policy_maps_to_redirection_filter() -> None:
    _r, office, _ = build("office")
    rules = [(u.get("vendor"), u.get("product"), u.get("allow"))
             for u in office.findall("devices/redirfilter/usbdev")]
    assert rules == [("0x1050", "0x0407", "yes"), ("0x046d", "0xc52b", "yes"),
                     (None, None, "no")]
    _r, none, _ = build("private-import")
    assert none.findall("devices/redirdev") == [] and none.find("devices/redirfilter") is None


def test_sound_goes_to_spice_only() -> None:
    """The shell's audio (playback, and the microphone for the shown VM) needs SPICE's
    playback and record channels: an HDA card whose only backend is SPICE."""
    for name in ("office", "private-import"):
        _r, dom, _ = build(name)
        (sound,) = dom.findall("devices/sound")
        (backend,) = dom.findall("devices/audio")
        assert sound.get("model") == "ich9" and backend.get("type") == "spice"
        assert sound.find("audio").get("id") == backend.get("id")  # type: ignore[union-attr]


def test_s3_policy_enables_guest_suspend_to_mem() -> None:
    _r, office, _ = build("office")
    assert office.find("pm/suspend-to-mem").get("enabled") == "yes"  # type: ignore[union-attr]
    _r, dev, _ = build("dev-workstation")
    assert dev.find("pm/suspend-to-mem").get("enabled") == "no"  # type: ignore[union-attr]
    assert dev.find("devices/channel/target").get("name") == \
        "org.qemu.guest_agent.0"  # type: ignore[union-attr]


def test_memory_and_vcpus_come_from_the_recipe() -> None:
    _r, dom, _ = build("dev-workstation")
    assert (dom.findtext("memory"), dom.find("memory").get("unit")) == ("12288", "MiB")  # type: ignore[union-attr]
    assert dom.findtext("vcpu") == "4" and dom.findtext("uuid") == UUID


def test_bad_bindings_are_refused() -> None:
    recipe = spec.load(RECIPES / "office" / "recipe.toml")
    with pytest.raises(ValueError, match="missing"):
        domain_xml(recipe, uuid=UUID, disks={})
    good = {d.name: DiskBinding(PurePosixPath("/x"), secret(1)) for d in recipe.disks}
    with pytest.raises(ValueError, match="UUID"):
        domain_xml(recipe, uuid="not-a-uuid", disks=good)


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.iterdir() if p.is_dir()))
def test_domain_xml_passes_libvirts_schema(name: str, tmp_path: Path) -> None:
    """libvirt's own RelaxNG check through the test driver (no daemon needed)."""
    need(shutil.which("virsh") is not None, "virsh is not installed (libvirt-clients)")
    _r, _dom, text = build(name)
    xml = tmp_path / "domain.xml"
    xml.write_text(text)
    out = run(["virsh", "-q", "-c", "test:///default", "define", "--validate", xml], timeout=30)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("cpu", [
    CPUProfile(),
    CPUProfile("kvm", "host-passthrough", ("arch-capabilities",)),
    CPUProfile("kvm", "host-model"),
    CPUProfile("qemu", "maximum"),
], ids=lambda c: c.describe().replace(" ", "_"))
def test_cpu_profile_sets_domain_type_and_cpu(cpu: CPUProfile, tmp_path: Path) -> None:
    _r, dom, text = build("office", cpu=cpu)
    assert dom.get("type") == cpu.domain_type
    el = dom.find("cpu")
    assert el is not None and el.get("mode") == cpu.cpu_mode
    assert [(f.get("policy"), f.get("name")) for f in el.findall("feature")] == \
        [("disable", f) for f in cpu.cpu_disable]
    need(shutil.which("virsh") is not None, "virsh is not installed (libvirt-clients)")
    xml = tmp_path / "domain.xml"
    xml.write_text(text)
    out = run(["virsh", "-q", "-c", "test:///default", "define", "--validate", xml], timeout=30)
    assert out.returncode == 0, out.stderr


def test_laptop_default_is_kvm_with_the_hosts_cpu() -> None:
    _r, dom, _t = build("office")
    assert dom.get("type") == "kvm"
    assert dom.find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    assert dom.find("cpu/feature") is None
