"""The bar's actions: sync now (vmclient-syncd), pause / resume the VMs (vmclient-powerd),
put an automatic host restart off past the next maintenance window ("Later",
vmclient-syncd's ``PostponeHostRestart(0)``, shown only while one is planned), shut
down (logind).  Each is one D-Bus call through Gio; ``done(message)`` says how it
went, in words, for the bar.

Who may: the seat's user is in the ``vmclient`` group (the bus policy lets the group
call syncd's and powerd's methods; polkit decides too where it runs); shutting down
is logind's ``PowerOff`` with ``interactive`` true, so polkit may ask.  vmclient-powerd
saves the VMs on the way down (its shutdown inhibitor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names
from .bar import postponed_text

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

SYNC_TIMEOUT_MS = 6 * 3600 * 1000  # SyncNow replies when every VM has synced
TIMEOUT_MS = 120_000
_OUTCOMES = {1: "synced", 2: "skipped", 3: "failed"}  # syncd's SyncNow outcome

# name: (label, bus name, path, interface, method, arguments, reply type, timeout)
ACTIONS: dict[str, tuple[str, str, str, str, str, Any, str, int]] = {
    "sync": ("Sync now", names.SYNC_BUS_NAME, names.SYNC_PATH, names.SYNC_IFACE, "SyncNow",
             ("(s)", ("",)), "(a(sus))", SYNC_TIMEOUT_MS),
    "pause": ("Pause VMs", names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE, "PauseAll",
              None, "(as)", TIMEOUT_MS),
    "resume": ("Resume VMs", names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE,
               "ResumeAll", None, "(as)", TIMEOUT_MS),
    "later": ("Later", names.SYNC_BUS_NAME, names.SYNC_PATH, names.SYNC_IFACE,
              "PostponeHostRestart", ("(u)", (0,)), "(x)", TIMEOUT_MS),
    "shutdown": ("Shut down", names.LOGIND_BUS, names.LOGIND_PATH, names.LOGIND_MANAGER,
                 "PowerOff", ("(b)", (True,)), "()", TIMEOUT_MS),
}


def result_text(action: str, untrusted_reply: Any) -> str:
    """What the bar says when an action's call returned."""
    if action == "sync":
        rows = [(str(vm), _OUTCOMES.get(outcome, "unknown"), str(detail))
                for vm, outcome, detail in (untrusted_reply or [[]])[0]]
        synced = sum(1 for _vm, outcome, _d in rows if outcome == "synced")
        other = [f"{vm} {outcome} ({detail})" for vm, outcome, detail in rows
                 if outcome != "synced"]
        return "; ".join([f"{synced} VM{'s' if synced != 1 else ''} synced", *other])
    if action in ("pause", "resume"):
        vms = list((untrusted_reply or [[]])[0])
        verb = "paused" if action == "pause" else "resumed"
        return f"{len(vms)} VM{'s' if len(vms) != 1 else ''} {verb}"
    if action == "later":  # past the next maintenance window
        return postponed_text((untrusted_reply or [0])[0])
    return "Shutting down\u2026"


def run(conn: Any, action: str, done: Callable[[str], None]) -> None:
    label, bus_name, path, iface, method, args, reply, timeout = ACTIONS[action]

    def finish(c: Any, res: Any) -> None:
        try:
            result = c.call_finish(res).unpack()
        except GLib.Error as err:
            Gio.DBusError.strip_remote_error(err)
            done(f"{label}: {err.message}")
            return
        done(result_text(action, result))
    variant = GLib.Variant(*args) if args is not None else None
    conn.call(bus_name, path, iface, method, variant, GLib.VariantType.new(reply),
              Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION, timeout, None, finish)
