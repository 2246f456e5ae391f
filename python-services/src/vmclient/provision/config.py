"""``/etc/vmclient/provision.toml``: where provisioning keeps things and what it talks to."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config
from ..transport import Repository
from ..virt.cpu import CPU_MODES, DOMAIN_TYPES, CPUProfile

if TYPE_CHECKING:  # imported where used: the CLI (and its completion) reads this module
    from ..host.gate import GateConfig  # and should not load libvirt for it

DEFAULT_PATH = Path("/etc/vmclient/provision.toml")
_NET_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
_BRIDGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$")  # IFNAMSIZ - 1


@dataclass(frozen=True)
class Zone:
    """One isolated libvirt network: its own bridge and subnet."""

    network: str
    bridge: str
    subnet: str  # the host takes the first address, DHCP the upper half

    def __post_init__(self) -> None:
        if not _NET_NAME.fullmatch(self.network):
            raise ValueError(f"network name {self.network!r} is not a libvirt network name")
        if not _BRIDGE.fullmatch(self.bridge):
            raise ValueError(f"bridge {self.bridge!r}: at most 15 letters, digits, _ . -")
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise ValueError(f"subnet {self.subnet!r}: {exc}") from None
        if net.prefixlen > 28:
            raise ValueError(f"subnet {self.subnet!r} is too small (at most /28)")


@dataclass(frozen=True)
class Networks:
    business_network: str = config.setting(
        "vmclient-business", help="libvirt network of business VMs (NAT, own bridge)")
    business_bridge: str = config.setting("vmcbr-business", help="its bridge")
    business_subnet: str = config.setting("10.181.0.0/24", help="its IPv4 subnet")
    private_network: str = config.setting(
        "vmclient-private", help="libvirt network of private VMs (NAT, own bridge)")
    private_bridge: str = config.setting("vmcbr-private", help="its bridge")
    private_subnet: str = config.setting("10.182.0.0/24", help="its IPv4 subnet")
    anti_spoofing: bool = config.setting(
        True, help="libvirt's clean-traffic nwfilter on every VM's NIC: frames with another "
                   "MAC, IP or ARP identity than the VM's own are dropped")

    def __post_init__(self) -> None:
        zones = self.zones()
        b, p = zones["business"], zones["private"]
        if b.network == p.network or b.bridge == p.bridge:
            raise ValueError("the business and private zones need their own network and bridge")
        if ipaddress.IPv4Network(b.subnet).overlaps(ipaddress.IPv4Network(p.subnet)):
            raise ValueError("the business and private subnets overlap")

    def zones(self) -> dict[str, Zone]:
        return {"business": Zone(self.business_network, self.business_bridge,
                                 self.business_subnet),
                "private": Zone(self.private_network, self.private_bridge, self.private_subnet)}


@dataclass(frozen=True)
class ProvisionConfig:
    repository: Repository = config.setting(
        Repository, help="where business images come from (the section sync.toml shares)")
    networks: Networks = config.setting(Networks, help="the two isolated zones")
    libvirt_uri: str = config.setting("qemu:///system", help="libvirt connection URI")
    domain_type: str = config.setting(
        "kvm", choices=DOMAIN_TYPES,
        help="libvirt domain type of every VM: kvm, or qemu (TCG, software emulation)")
    cpu_mode: str = config.setting(
        "host-passthrough", choices=CPU_MODES,
        help="the VMs' CPU: the host's own (host-passthrough), libvirt's closest model "
             "(host-model) or QEMU's maximum (the one TCG runs)")
    cpu_disable: tuple[str, ...] = config.setting(
        (), help="CPU features to hide from the VMs (one a host's KVM refuses, e.g. "
                 "arch-capabilities); python -m vmclient.provision.cpuprobe tells")
    state_dir: Path = config.setting(
        Path("/var/lib/vmclient/provision"),
        help="root-only: catalog state, chunk cache (sealed), wrapped VM keys, recipes")
    device_dir: Path = config.setting(
        Path("/var/lib/vmclient/device"), help="root-only: the device's private keys (0600)")
    manage_dir: Path = config.setting(
        Path("/var/lib/vmclient/manage"),
        help="root-only: the management state (the lease business VMs start under)")
    images_dir: Path = config.setting(
        Path("/var/lib/libvirt/images/vmclient"), help="the VMs' encrypted disks")
    media_dir: Path = config.setting(
        Path("/var/lib/vmclient/media"),
        help="install media a recipe may name by path (owned by root, writable by nobody "
             "else); other media come as a file the caller opened (vmclientctl vm install)")
    staging_dir: Path = config.setting(
        Path("/run/vmclient/provision"),
        help="RAM-backed (tmpfs) scratch for plaintext on its way into an encrypted disk")
    staging_mib: int = config.setting(
        128, min=8, max=4096, help="plaintext held in the staging dir at once")
    fill_mib_s: float = config.setting(
        0.0, min=0, max=100000,
        help="bandwidth of a streamed restore's background fill in MiB/s (0: no limit); "
             "the guest's own reads are never held back")
    stream_read_timeout_s: float = config.setting(
        30.0, min=2, max=600,
        help="how long a streamed disk's read waits for an unreachable repository before "
             "the VM pauses (it resumes when the repository answers again); the read-ahead "
             "of the fill is sized so that its fetches land well within it on a slow link")

    def __post_init__(self) -> None:
        self.cpu_profile()  # a CPU mode the domain type cannot run is a config error

    def cpu_profile(self) -> CPUProfile:
        return CPUProfile(self.domain_type, self.cpu_mode, tuple(self.cpu_disable))


def gate_config(cfg: ProvisionConfig) -> GateConfig:
    """Where the start gate finds the keys and the lease (provisioning's own layout)."""
    from ..host.gate import GateConfig

    return GateConfig(cfg.device_dir, cfg.state_dir / "keys", cfg.manage_dir)


def load(path: str | Path = DEFAULT_PATH) -> ProvisionConfig:
    return config.load(ProvisionConfig, path)
