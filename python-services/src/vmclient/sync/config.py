"""``/etc/vmclient/sync.toml``: what ``vmclient-syncd`` synchronises, when, and where to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..transport import Repository
from .policy import Rules

DEFAULT_PATH = Path("/etc/vmclient/sync.toml")


@dataclass(frozen=True)
class Schedule:
    enabled: bool = config.setting(
        True, help="sync on the schedule (false: only on demand, `vmclientctl sync now`)")
    interval_minutes: float = config.setting(
        60.0, min=1, max=7 * 24 * 60, help="minutes between two scheduled syncs of a VM")
    recheck_seconds: float = config.setting(
        60.0, min=1, max=3600,
        help="how often a held-back sync looks at battery, network and datacenter again")


@dataclass(frozen=True)
class Battery:
    sync_on_battery: bool = config.setting(True, help="sync on battery at all")
    min_percent: float = config.setting(
        30.0, min=0, max=100, help="no sync on battery below this charge (UPower's display "
        "device)")
    on_demand_overrides: bool = config.setting(
        False, help="`vmclientctl sync now` runs on battery below min_percent too")


@dataclass(frozen=True)
class Network:
    allow_metered: bool = config.setting(False, help="sync over a metered link")
    metered_interfaces: tuple[str, ...] = config.setting(
        (), help="without NetworkManager: interfaces that are metered (e.g. wwan0)")
    on_demand_overrides: bool = config.setting(
        True, help="`vmclientctl sync now` runs over a metered link too")
    max_upload_mib_s: float = config.setting(
        0.0, min=0, max=100000, help="upload bandwidth limit in MiB/s (0: none)")


@dataclass(frozen=True)
class Manage:
    enabled: bool = config.setting(
        True, help="host the remote-management agent (orders, lease) in this daemon")
    state_dir: Path = config.setting(
        Path("/var/lib/vmclient/manage"), help="root-only: enrolment, lease, orders, wipe")
    images_dir: Path = config.setting(
        Path("/var/lib/libvirt/images/vmclient"), help="the VMs' disks (removed by a wipe)")
    lease_days: int = config.setting(14, min=1, max=365, help="offline lease in days")
    device_name: str = config.setting(
        "", help="the name an enrolment (the shell's Enrol) gives this laptop (empty: the "
        "host name)")
    dropbox_user: str = config.setting(
        "vmc-enrol", help="the enrolment drop box's account on an sftp:// repository")
    dropbox_key: Path = config.setting(
        Path("/etc/vmclient/dropbox.key"),
        help="the enrolment drop box's SSH private key (sftp:// only; ships with the image)")


@dataclass(frozen=True)
class HostUpdates:
    enabled: bool = config.setting(
        True, help="take host updates (RAUC bundles) from the datacenter; needs the enrolled "
        "management agent and rauc")
    channel: str = config.setting(
        "stable", choices=("stable", "testing"), help="the channel this laptop follows")
    data_dir: Path = config.setting(
        Path("/var/lib/vmclient/host-updates"),
        help="root-only, on the data partition: downloaded bundles (never a slot)")
    rauc_conf: str = config.setting(
        "", help="RAUC's system.conf (empty: RAUC's own default, /etc/rauc/system.conf)")
    interval_minutes: float = config.setting(
        60.0, min=1, max=7 * 24 * 60, help="minutes between two looks at the catalog")
    wait_for_idle: bool = config.setting(
        True, help="in IT's maintenance window, restart into an installed update only while "
        "logind's IdleHint says no one uses the laptop (vmclient-shell sets its session's "
        "after 15 minutes without input; a graphical session that never does is never idle)")


@dataclass(frozen=True)
class SyncConfig:
    repository: Repository = config.setting(
        Repository, help="the datacenter (the section provision.toml shares)")
    schedule: Schedule = config.setting(Schedule, help="when")
    battery: Battery = config.setting(Battery, help="not on a low battery")
    network: Network = config.setting(Network, help="not on a metered link")
    manage: Manage = config.setting(Manage, help="orders and the lease")
    host_updates: HostUpdates = config.setting(
        HostUpdates, help="host updates: A/B slots through RAUC (repository-format.md §8.9)")
    libvirt_uri: str = config.setting("qemu:///system", help="libvirt connection URI")
    state_dir: Path = config.setting(
        Path("/var/lib/vmclient/sync"), help="root-only: what each VM's last sync was")
    provision_dir: Path = config.setting(
        Path("/var/lib/vmclient/provision"),
        help="provisioning's state: the VMs' wrapped data keys under keys/")
    device_dir: Path = config.setting(
        Path("/var/lib/vmclient/device"), help="root-only: the device's private keys")
    scratch_dir: Path = config.setting(
        Path("/var/lib/libvirt/images/vmclient-sync"),
        help="a sync's backup job: its copy-before-write files and NBD socket "
             "(removed after each sync)")
    memory_dir: Path = config.setting(
        Path("/run/vmclient/sync"),
        help="RAM-backed (tmpfs): memory images of VMs with sync.memory, removed once read")
    name_prefix: str = config.setting(
        "", help="only domains whose name starts so are synchronised (tests share libvirtd)")

    def rules(self) -> Rules:
        return Rules(interval=self.schedule.interval_minutes * 60,
                     on_battery=self.battery.sync_on_battery,
                     min_battery_percent=self.battery.min_percent,
                     allow_metered=self.network.allow_metered,
                     on_demand_overrides_battery=self.battery.on_demand_overrides,
                     on_demand_overrides_metered=self.network.on_demand_overrides)


def load(path: str | Path = DEFAULT_PATH) -> SyncConfig:
    return config.load(SyncConfig, path)
