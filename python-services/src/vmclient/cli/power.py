"""``vmclientctl power status | pause-all | resume-all | pause VM | resume VM``."""

from __future__ import annotations

import argparse
from typing import Any

from ..dbus import client as bus
from ..dbus import names
from ..power.policy import Cause, HoldAction, LidAction, LidState, Phase, PowerSource


def add_parser(sub: Any) -> None:
    p = sub.add_parser("power", help="lid, battery and the VMs' sleep state")
    cmds = p.add_subparsers(dest="command", required=True, metavar="ACTION")
    for name, func, render, help_ in (
        ("status", status, render_status, "show lid, power and what is paused"),
        ("pause-all", pause_all, render_names("paused"), "pause every running VM"),
        ("resume-all", resume_all, render_names("resumed"), "resume the VMs paused by vmclient"),
    ):
        c = cmds.add_parser(name, help=help_)
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(func=func, render=render)
    for name, method, verb, help_ in (
        ("pause", "PauseVM", "paused", "pause one VM (until you resume it)"),
        ("resume", "ResumeVM", "resumed", "resume one VM vmclient paused"),
    ):
        c = cmds.add_parser(name, help=help_)
        c.add_argument("vm")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(func=one_vm(method, verb), render=render_names(verb))


async def status(_: argparse.Namespace) -> dict[str, Any]:
    b = await bus.connect()
    try:
        p = await bus.get_all(b, names.POWER_PATH, names.POWER_IFACE)
    finally:
        b.disconnect()
    causes = {n: [_enum(Cause, c) for c in cs] for n, cs in p.get("PauseCauses", [])}
    return {
        "lid": _enum(LidState, p["LidState"]),
        "power_source": {PowerSource.AC: "ac", PowerSource.BATTERY: "battery"}.get(
            _safe(PowerSource, p["PowerSource"]), "unknown"),
        "battery_present": bool(p["BatteryPresent"]),
        "battery_percent": float(p["BatteryPercent"]),
        "docked": bool(p["Docked"]),
        "state": _enum(Phase, p["State"]),
        "paused_by_us": [{"name": n, "action": _enum(HoldAction, a),
                          "causes": causes.get(n, [])} for n, a in p["PausedByUs"]],
        "owns_lid": bool(p["OwnsLid"]),
        "lid_action": _enum(LidAction, p["LidAction"]),
        "restore_refused": [{"name": n, "reason": r} for n, r in p.get("RestoreRefused", [])],
    }


def _safe(enum_cls: Any, value: int) -> Any:
    try:
        return enum_cls(value)
    except ValueError:
        return enum_cls(0)


def _enum(enum_cls: Any, value: int) -> str:
    return str(_safe(enum_cls, value).name.lower())


def render_status(s: dict[str, Any]) -> str:
    lid_note = {
        "suspend": "closing it pauses every VM and suspends the laptop",
        "pause": "closing it pauses every VM; the laptop stays on",
        "ignore": "closing it is left to the system",
    }.get(s["lid_action"], "")
    power = {"ac": "AC", "battery": "battery", "unknown": "unknown"}[s["power_source"]]
    if s["battery_present"]:
        power += f", battery at {s['battery_percent']:.0f}%"
    else:
        power += " (no battery)"
    paused = ", ".join(f"{v['name']} ({v['action']}" + (f" for {'+'.join(v['causes'])}"
                                                          if v["causes"] else "") + ")"
                       for v in s["paused_by_us"]) or "none"
    rows = [
        ("Lid", f"{s['lid']}" + (f" ({lid_note})" if s["lid"] != "absent" else " (no lid)")),
        ("Power", power),
        ("Docked", "yes" if s["docked"] else "no"),
        ("VMs", s["state"]),
        ("Paused by vmclient", paused),
    ]
    rows += [("Not restored", f"{v['name']}: {v['reason']}") for v in s["restore_refused"]]
    return "\n".join(f"{k + ':':<20}{v}" for k, v in rows)


def render_names(verb: str) -> Any:
    def render(r: dict[str, Any]) -> str:
        return f"{verb}: " + (", ".join(r[verb]) or "none")
    return render


async def pause_all(_: argparse.Namespace) -> dict[str, Any]:
    b = await bus.connect()
    try:
        (paused,) = await bus.call(b, names.POWER_PATH, names.POWER_IFACE, "PauseAll")
    finally:
        b.disconnect()
    return {"paused": list(paused)}


def one_vm(method: str, verb: str) -> Any:
    """PauseVM / ResumeVM of ``args.vm``."""
    async def run(args: argparse.Namespace) -> dict[str, Any]:
        b = await bus.connect()
        try:
            (names_,) = await bus.call(b, names.POWER_PATH, names.POWER_IFACE, method, "s",
                                       [args.vm])
        finally:
            b.disconnect()
        return {verb: list(names_)}
    return run


async def resume_all(_: argparse.Namespace) -> dict[str, Any]:
    b = await bus.connect()
    try:
        (resumed,) = await bus.call(b, names.POWER_PATH, names.POWER_IFACE, "ResumeAll")
    finally:
        b.disconnect()
    return {"resumed": list(resumed)}
