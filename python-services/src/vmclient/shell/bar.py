"""What the status bar says, from what the daemons report: pure functions.

The power field comes from vmclient-powerd's ``Power`` properties
(docs/dbus-api.md): ``PowerSource`` (1 AC, 2 battery), ``BatteryPresent``,
``BatteryPercent``, ``State`` (2 pausing, 3 paused, 4 resuming, 5 saving).
The sync field from vmclient-syncd's ``Sync`` properties: ``State``
(1 idle, 2 running, 3 paused, 4 waiting), ``CurrentVM``, ``BytesDone``/``BytesTotal``,
``LeaseState`` (in words) and ``LeaseRemaining`` (seconds, -1 unknown),
``HostUpdate`` (a release waiting for a restart), ``HostRestartAt`` (unix time of
IT's maintenance restart, 0 none) and ``HostRestartWaiting`` (what it waits for once
the window is open).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

AC, BATTERY = 1, 2
LID_CLOSED = 3  # powerd's LidState
_PHASES = {2: "pausing the VMs", 3: "VMs paused", 4: "resuming the VMs", 5: "saving the VMs"}
SYNC_RUNNING = 2  # syncd's State
_SYNC_HELD = {3: "paused", 4: "waiting"}


def power_text(untrusted_props: Mapping[str, Any]) -> str:
    """"On AC, battery 80%", "On battery, 45%", "On AC"; "" while powerd is not there."""
    if not untrusted_props:
        return ""
    source = untrusted_props.get("PowerSource")
    present = bool(untrusted_props.get("BatteryPresent"))
    try:
        percent = float(untrusted_props.get("BatteryPercent", 0.0))
    except (TypeError, ValueError):
        percent = 0.0
    if source == BATTERY:
        text = f"On battery, {percent:.0f}%" if present else "On battery"
    elif source == AC:
        text = f"On AC, battery {percent:.0f}%" if present else "On AC"
    else:
        text = ""
    phase = _PHASES.get(untrusted_props.get("State", 0))
    return f"{text} \u00b7 {phase}" if text and phase else (phase or text)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {rest // 60} min"


def sync_text(untrusted_props: Mapping[str, Any], now: float | None = None) -> str:
    """"Syncing work 45%", "Sync paused", "Sync waiting"; then the lease: "lease 13 d 2 h",
    "lease expired"; "" while syncd is not there (or idle and not managed)."""
    if not untrusted_props:
        return ""
    parts = []
    state = _int(untrusted_props.get("State"))
    if state == SYNC_RUNNING:
        vm = str(untrusted_props.get("CurrentVM", ""))
        done, total = _int(untrusted_props.get("BytesDone")), _int(untrusted_props.get(
            "BytesTotal"))
        percent = f" {min(100, done * 100 // total)}%" if total > 0 else ""
        parts.append(f"Syncing {vm}{percent}".replace("  ", " "))
    elif state in _SYNC_HELD:
        parts.append(f"Sync {_SYNC_HELD[state]}")
    remaining = _int(untrusted_props.get("LeaseRemaining"), -1)
    if remaining > 0:
        parts.append(f"lease {_duration(remaining)}")
    elif "expired" in str(untrusted_props.get("LeaseState", "")):
        parts.append("lease expired")
    if untrusted_props.get("HostUpdate"):  # a host update is installed: not its text
        parts.append("restart to update" + _automatic(untrusted_props, now))
    return " \u00b7 ".join(parts)


_WAITING = {"AC power": "when on AC power", "idle": "when the laptop is idle"}


def _automatic(untrusted_props: Mapping[str, Any], now: float | None) -> str:
    """" (automatic at 22:30)"; inside the window (``HostRestartAt`` past) what it waits
    for, from ``HostRestartWaiting``: " (automatic when on AC power)"; "" no window."""
    at = _int(untrusted_props.get("HostRestartAt"))
    if at <= 0:
        return ""
    if at > (time.time() if now is None else now):
        return f" (automatic at {_clock(at)})"
    return f" (automatic {_WAITING.get(str(untrusted_props.get('HostRestartWaiting')), 'now')})"


def postpone_offered(untrusted_props: Mapping[str, Any]) -> bool:
    """The bar's "Later" button (``PostponeHostRestart``): while the laptop means to
    restart into an installed host update by itself."""
    return bool(untrusted_props.get("HostUpdate")) and \
        _int(untrusted_props.get("HostRestartAt")) > 0


def postponed_text(untrusted_at: Any) -> str:
    """What the bar says when ``PostponeHostRestart`` answered (the new HostRestartAt)."""
    at = _int(untrusted_at)
    return f"Restart postponed to {_clock(at)}" if at > 0 else "Restart postponed"


def _clock(unix: int) -> str:
    """Local HH:MM of a unix time, with the day when it is not today."""
    try:
        t, now = time.localtime(unix), time.localtime()
    except (OverflowError, OSError, ValueError):
        return "?"
    return time.strftime("%H:%M" if t[:3] == now[:3] else "%a %H:%M", t)


def pending_text(assigned: list[tuple[str, str]], installed: set[str]) -> str:
    """IT's pending orders, from provd's ``ListAssigned`` rows (vm, outcome) and the VMs
    installed: "From IT: 2 VMs to install", "From IT: 1 order failed"; "" nothing pending."""
    to_install = sorted({vm for vm, outcome in assigned
                         if outcome == "done" and vm not in installed})
    failed = sum(1 for _vm, outcome in assigned if outcome == "failed")
    parts = []
    if to_install:
        parts.append(f"{len(to_install)} VM{'s' if len(to_install) > 1 else ''} to install")
    if failed:
        parts.append(f"{failed} order{'s' if failed > 1 else ''} failed")
    return "From IT: " + ", ".join(parts) if parts else ""


_INSTALL_PHASES = {2: "reading the catalog", 3: "downloading", 4: "assembling", 5: "defining",
                   6: "starting from the datacenter", 8: "copying the media"}
_RESTORE_PHASES = (6,)  # a streamed restore (vm restore --stream)


def install_text(untrusted_props: Mapping[str, Any]) -> str:
    """vmclient-provd's install progress (``Provisioning`` properties ``Phase``,
    ``CurrentVM``, ``BytesDone``/``BytesTotal``): "Installing crm: downloading 45%";
    else the disks of streamed restores filling in the background (``Fills``):
    "Restoring crm: filling its disks 25%"; "" when idle or provd is not there."""
    index = _int(untrusted_props.get("Phase"))
    phase = _INSTALL_PHASES.get(index)
    if phase is None:
        return fills_text(untrusted_props.get("Fills"))
    verb = "Restoring" if index in _RESTORE_PHASES else "Installing"
    vm = str(untrusted_props.get("CurrentVM", ""))[:40]
    done, total = _int(untrusted_props.get("BytesDone")), _int(untrusted_props.get("BytesTotal"))
    percent = f" {min(100, done * 100 // total)}%" if total > 0 else ""
    return f"{verb} {vm}: {phase}{percent}" if vm else f"{verb}: {phase}{percent}"


def install_fraction(untrusted_props: Mapping[str, Any]) -> float | None:
    """How far the long operation's phase is (0..1) when it counts bytes (a download, an
    assembly, a private VM's media copied in); None for a phase that counts none, idle,
    or no provd: the install page's progress bar then hides."""
    if _INSTALL_PHASES.get(_int(untrusted_props.get("Phase"))) is None:
        return None
    done, total = _int(untrusted_props.get("BytesDone")), _int(untrusted_props.get("BytesTotal"))
    return min(1.0, max(0, done) / total) if total > 0 else None


def fill_percents(untrusted_fills: Any) -> dict[str, int]:
    """provd's ``Fills`` (VM → bytes local, bytes total) as VM → percent local; {} if it
    is not of that type."""
    try:
        return {str(vm): max(0, min(100, int(done) * 100 // int(total)))
                if int(total) > 0 else 0
                for vm, (done, total) in dict(untrusted_fills or {}).items()}
    except (TypeError, ValueError):
        return {}


def fills_text(untrusted_fills: Any) -> str:
    """provd's ``Fills``: "Restoring crm: filling its disks 25%"; several VMs: "Restoring
    2 VMs: filling their disks (crm 25%, hr 60%)"; "" none (or not of that type)."""
    fills = sorted((vm[:40], percent) for vm, percent in fill_percents(untrusted_fills).items())
    if len(fills) == 1:
        ((vm, percent),) = fills
        return f"Restoring {vm}: filling its disks {percent}%"
    each = ", ".join(f"{vm} {percent}%" for vm, percent in fills[:4])
    more = f", {len(fills) - 4} more" if len(fills) > 4 else ""
    return f"Restoring {len(fills)} VMs: filling their disks ({each}{more})" if fills else ""


_CAUSES = {1: "paused for sleep", 2: "paused: lid closed", 3: "paused by you",
           4: "saved: battery low", 5: "saved at shutdown"}
_SAVED = 3  # powerd's PausedByUs action: 1 paused, 2 guest S3, 3 saved


def vm_detail(vm: str, state: str, untrusted_power: Mapping[str, Any]) -> str:
    """Why a VM is not running, from provd's state and powerd's ``PausedByUs``/
    ``PauseCauses``: "paused by you", "paused for sleep", "saved: battery low"; the
    state as provd says it ("paused", "shutoff") when powerd did not do it; "" running."""
    if state == "running":
        return ""
    try:
        modes = {str(n): int(m) for n, m in untrusted_power.get("PausedByUs", [])}
        causes = {str(n): sorted(int(c) for c in cs)
                  for n, cs in untrusted_power.get("PauseCauses", [])}
    except (TypeError, ValueError):
        modes, causes = {}, {}
    if vm not in modes:
        return state
    words = [_CAUSES[c] for c in causes.get(vm, []) if c in _CAUSES]
    if not words:
        return "saved" if modes[vm] == _SAVED else "paused"
    if modes[vm] == _SAVED:
        words = [w.replace("paused", "saved") for w in words]
    return ", ".join(words)
