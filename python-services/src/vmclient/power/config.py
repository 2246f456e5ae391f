"""``/etc/vmclient/power.toml``: the power manager's configuration."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..host.gate import KeySettings
from .policy import LidAction, LidPolicy, VMPolicy, lid_action_from_name

DEFAULT_PATH = Path("/etc/vmclient/power.toml")
LID_CHOICES = ("suspend", "pause", "ignore")
VM_POLICY_CHOICES = tuple(p.value for p in VMPolicy)


@dataclass(frozen=True)
class Lid:
    own: bool = config.setting(
        True, help="hold logind's handle-lid-switch block lock and decide ourselves")
    on_ac: str = config.setting(
        "suspend", choices=LID_CHOICES,
        help="lid closed on AC: suspend (pause VMs, then the host), pause (VMs only), ignore")
    on_battery: str = config.setting(
        "suspend", choices=LID_CHOICES, help="lid closed on battery")
    docked: str = config.setting(
        "ignore", choices=LID_CHOICES, help="lid closed while docked (external display)")


@dataclass(frozen=True)
class Battery:
    critical_percent: float = config.setting(
        5.0, min=0, max=50, help="at or below this level on battery every VM is saved")
    restore_on_ac: bool = config.setting(
        True, help="start VMs saved for a critical battery again when AC comes back")


@dataclass(frozen=True)
class VMs:
    default_policy: str = config.setting(
        "pause", choices=VM_POLICY_CHOICES,
        help="sleep policy of a VM whose domain metadata names none")
    policies: Mapping[str, str] = config.setting(
        {}, choices=VM_POLICY_CHOICES,
        help="per-VM sleep policy by domain name (overrides the domain metadata)")
    name_prefix: str = config.setting(
        "", help="manage only VMs whose name starts with this (empty: every VM; "
                 "for test hosts shared with other VMs)")
    timeout_s: float = config.setting(
        2.0, min=0.1, max=60, help="one VM's pause or resume may take this long")
    s3_timeout_s: float = config.setting(
        3.0, min=0.1, max=60, help="guest S3 through the agent may take this long")
    save_timeout_s: float = config.setting(
        120.0, min=1, max=3600, help="one VM's managed save may take this long")


@dataclass(frozen=True)
class Sleep:
    max_delay_s: float = config.setting(
        4.0, min=0.2, max=60,
        help="bound on pausing every VM before the sleep lock is released "
             "(kept below logind's InhibitDelayMaxSec)")
    lock_screen_s: float = config.setting(
        0.5, min=0, max=30,
        help="before pausing for the lid or sleep, wait at most this long for the screen "
             "to lock (the shell's pause delay; at most half of the bound above)")


@dataclass(frozen=True)
class Shutdown:
    save: bool = config.setting(
        True, help="managed save of every running VM when the daemon stops (host shutdown)")
    restore_on_start: bool = config.setting(
        True, help="start the VMs saved at shutdown when the daemon starts again")


@dataclass(frozen=True)
class Libvirt:
    uri: str = config.setting("qemu:///system", help="libvirt connection URI")
    connections: int = config.setting(
        2, min=1, max=8, help="connections to libvirtd (each runs at most 5 calls at once)")


@dataclass(frozen=True)
class PowerConfig:
    lid: Lid = config.setting(Lid, help="lid handling")
    battery: Battery = config.setting(Battery, help="battery handling")
    vms: VMs = config.setting(VMs, help="per-VM behaviour")
    sleep: Sleep = config.setting(Sleep, help="host sleep")
    shutdown: Shutdown = config.setting(Shutdown, help="host shutdown")
    libvirt: Libvirt = config.setting(Libvirt, help="hypervisor connection")
    keys: KeySettings = config.setting(
        KeySettings, help="keys and lease for restoring VMs with encrypted disks")
    state_dir: Path = config.setting(
        Path("/var/lib/vmclient/power"),
        help="where the daemon remembers what it saved (kept across reboots)")
    runtime_dir: Path = config.setting(
        Path("/run/vmclient/power"),
        help="where the daemon remembers what it paused (a tmpfs: a paused VM does not "
             "outlive the host, nor does this record)")

    def lid_policy(self) -> LidPolicy:
        return LidPolicy(
            own_lid=self.lid.own,
            on_ac=lid_action_from_name(self.lid.on_ac),
            on_battery=lid_action_from_name(self.lid.on_battery),
            docked=lid_action_from_name(self.lid.docked),
        )


def load(path: str | Path = DEFAULT_PATH) -> PowerConfig:
    return config.load(PowerConfig, path)


__all__ = ["DEFAULT_PATH", "LidAction", "PowerConfig", "load"]
