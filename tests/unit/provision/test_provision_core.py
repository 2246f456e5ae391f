"""Pure parts of provisioning: zone networks, configuration, progress, local keys."""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from testlib import ROOT
from vmclient import config
from vmclient.errors import ConfigError
from vmclient.host.keys import DeviceKeys, VMKeyError, VMKeys
from vmclient.provision import config as pconfig
from vmclient.provision import spec
from vmclient.provision.config import ProvisionConfig, Zone
from vmclient.provision.domainxml import DiskBinding, domain_xml
from vmclient.provision.network import host_address, network_xml
from vmclient.provision.progress import Progress
from vmclient.virt.cpu import CPUProfile

UUID = "0b9e0f3c-2f6a-4d38-9d0e-6b1c2a3d4e5f"


def test_network_xml_is_nat_on_its_own_bridge() -> None:
    root = ET.fromstring(network_xml(Zone("vmclient-private", "vmcbr-private", "10.182.0.0/24")))
    assert root.findtext("name") == "vmclient-private"
    assert root.find("forward").get("mode") == "nat"
    assert root.find("bridge").get("name") == "vmcbr-private"
    ip = root.find("ip")
    assert (ip.get("address"), ip.get("netmask")) == ("10.182.0.1", "255.255.255.0")
    rng = ip.find("dhcp/range")
    assert (rng.get("start"), rng.get("end")) == ("10.182.0.128", "10.182.0.254")
    assert host_address(Zone("n", "b", "10.9.0.0/16")) == "10.9.0.1"


def parse_config(tmp_path: Path, text: str) -> ProvisionConfig:
    path = tmp_path / "provision.toml"
    path.write_text(text)
    return config.load(ProvisionConfig, path)


@pytest.mark.parametrize(("text", "problem"), [
    ('[networks]\nprivate_subnet = "10.181.0.128/25"\n', "subnets overlap"),
    ('[networks]\nprivate_bridge = "vmcbr-business"\n', "own network and bridge"),
    ('[networks]\nbusiness_bridge = "a-bridge-name-too-long"\n', "at most 15"),
    ('[networks]\nbusiness_subnet = "10.1.2.3/24"\n', "has host bits set"),
    ('staging_mib = 2\n', "below the minimum"),
    ('[networks]\nbusiness_zone = "x"\n', "unknown key"),
])
def test_config_errors_name_file_and_key(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        parse_config(tmp_path, text)
    assert str(tmp_path / "provision.toml") in str(info.value)


def test_default_config_has_two_distinct_zones(tmp_path: Path) -> None:
    zones = parse_config(tmp_path, "").networks.zones()
    assert zones["business"].network == "vmclient-business"
    assert zones["private"].network == "vmclient-private"


def test_domain_xml_uses_the_configured_network() -> None:
    recipe = spec.load(ROOT / "recipes" / "office" / "recipe.toml")
    disks = {d.name: DiskBinding(Path(f"/x/{d.name}.qcow2"), UUID) for d in recipe.disks}
    xml = domain_xml(recipe, uuid=UUID, disks=disks,
                     networks={"business": "test-biz", "private": "test-priv"})
    assert ET.fromstring(xml).find("devices/interface/source").get("network") == "test-biz"


def test_progress_rate_and_eta() -> None:
    now = [100.0]
    p = Progress(vm="office", clock=lambda: now[0])
    p.begin("download", 100 << 20)
    now[0] += 2
    p.done = 50 << 20
    assert p.rate == 25 << 20
    assert p.eta == pytest.approx(2.0)
    assert "50.0%" in p.line() and "25.0 MiB/s" in p.line() and "ETA    2 s" in p.line()


def test_vm_key_is_stored_only_wrapped_and_root_only(tmp_path: Path) -> None:
    device = DeviceKeys.load_or_create(tmp_path / "device")
    for f in (tmp_path / "device").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    vms = VMKeys(tmp_path / "state", device)
    keys = vms.create("office")
    blob = vms.path("office").read_bytes()
    assert keys.secret not in blob and keys.luks not in blob and keys.passphrase() not in blob
    assert stat.S_IMODE(vms.path("office").stat().st_mode) == 0o600
    assert vms.load("office").luks == keys.luks
    with pytest.raises(VMKeyError, match="exists already"):
        vms.create("office")
    other = VMKeys(tmp_path / "state", DeviceKeys.load_or_create(tmp_path / "other"))
    with pytest.raises(VMKeyError, match="does not open with this device's key"):
        other.load("office")
    vms.destroy("office")
    with pytest.raises(VMKeyError, match="no data key"):
        vms.load("office")


def test_shipped_example_config_is_the_defaults() -> None:
    shipped = config.load(ProvisionConfig, ROOT / "python-services" / "data" / "vmclient"
                          / "provision.toml", missing_ok=False)
    assert shipped == ProvisionConfig()


def test_cpu_profile_settings(tmp_path: Path) -> None:
    assert pconfig.load(tmp_path / "none.toml").cpu_profile() == CPUProfile()
    path = tmp_path / "provision.toml"
    path.write_text('domain_type = "kvm"\ncpu_mode = "host-passthrough"\n'
                    'cpu_disable = ["arch-capabilities"]\n')
    assert pconfig.load(path).cpu_profile() == CPUProfile(
        "kvm", "host-passthrough", ("arch-capabilities",))
    path.write_text('domain_type = "qemu"\n')  # TCG cannot pass the host's CPU through
    with pytest.raises(ConfigError, match="needs KVM"):
        pconfig.load(path)
    path.write_text('cpu_mode = "host"\n')
    with pytest.raises(ConfigError, match="cpu_mode"):
        pconfig.load(path)


def test_a_fill_in_the_background_does_not_take_over_the_progress_of_a_restore() -> None:
    """By hand: while ``vm restore mem --stream`` ran, office's fill overwrote provd's
    progress properties (the CLI of mem showed "office: fill 47%"), and a second restore
    was refused as "another install or upgrade (office) is running".  The fills are in
    ``Fills`` now, every VM's its own, whatever runs; the progress properties are the
    restore's."""
    from vmclient.errors import UsageError
    from vmclient.provision.service import Phase, ProvisioningInterface

    iface = ProvisioningInterface()
    iface.begin_work("restoring a VM")
    restore = Progress(vm="mem")
    restore.begin("download", 100)
    iface.report(restore)
    iface.fills_changed({"office": (470, 1000), "hr": (1, 4)})
    assert (iface.progress.vm, iface.Phase) == ("mem", Phase.DOWNLOAD)
    assert iface.Fills == {"hr": [1, 4], "office": [470, 1000]}
    with pytest.raises(UsageError, match=r"vmclient-provd is restoring a VM \(mem\), one "
                       "operation at a time: try again when it is done"):
        iface.begin_work("restoring a VM")
    iface.idle()  # the restore is done: the fills go on, the phase is idle
    assert (iface.Phase, iface.CurrentVM) == (Phase.IDLE, "")
    assert iface.Fills == {"hr": [1, 4], "office": [470, 1000]}
    iface.fills_changed({"hr": (1, 4)})  # office's disks are local
    assert iface.Fills == {"hr": [1, 4]}
    iface.begin_work("installing a VM")  # one at a time, not one ever


def test_a_phase_that_counts_no_bytes_says_what_it_does() -> None:
    """By hand, ``vm restore --stream`` printed "catalog 100.0%  0.0/0.0 MiB  0.0 MiB/s
    ETA ? s" and the same for "stream": numbers that mean nothing."""
    from vmclient.provision.progress import line

    assert line("office", "catalog", 0, 0, 0.0, -1) == \
        "office: catalog   asking the datacenter (catalog, data key, snapshot)"
    assert line("office", "stream", 0, 0, 0.0, -1) == \
        "office: stream    starting the VM; its disks then stream in from the datacenter"
    # a download with nothing to fetch still says so in bytes
    assert "0.0/0.0 MiB" in line("office", "download", 0, 0, 0.0, -1)
