"""The bar's actions: sync now (vmclient-syncd), pause / resume the VMs, or only the one
shown (vmclient-powerd's ``PauseVM``/``ResumeVM``),
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
from .state import VMEntry

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


# The shown VM's button: (label, powerd's method); its action from the VM's state.
VM_ACTIONS = {"pause-vm": ("Pause", "PauseVM"), "resume-vm": ("Resume", "ResumeVM")}


def vm_action(shown: VMEntry | None) -> str | None:
    """The shown VM's button: "pause-vm" while it runs, "resume-vm" while it is shown but
    does not run (paused, suspended); None (greyed): no VM shown, or it is starting
    (QEMU is being started: there is nothing to resume, and it runs in a moment)."""
    if shown is None or shown.state == "starting":
        return None
    return "pause-vm" if shown.state == "running" else "resume-vm"


def vm_result_text(action: str, vm: str, untrusted_reply: Any) -> str:
    """What the bar says when PauseVM/ResumeVM returned: "work paused", "work resumed";
    ResumeVM undoes only vmclient's pauses of it."""
    done = vm in [str(n) for n in (untrusted_reply or [[]])[0]]
    if action == "pause-vm":
        return f"{vm} paused" if done else f"{vm}: not paused"
    return f"{vm} resumed" if done else \
        f"{vm}: not resumed (vmclient did not pause it, or it is saved)"


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
    _call(conn, (bus_name, path, iface, method), GLib.Variant(*args) if args else None,
          reply, timeout, f"{label}: ", lambda r: done(result_text(action, r)), done)


def run_for(conn: Any, shown: VMEntry | None, done: Callable[[str], None]) -> None:
    """The shown VM's pause or resume, as its state says (nothing when none is shown)."""
    action = vm_action(shown)
    if shown is None or action is None:
        return
    done(f"{VM_ACTIONS[action][0]} {shown.name}\u2026")
    run_vm(conn, action, shown.name, done)


def run_vm(conn: Any, action: str, vm: str, done: Callable[[str], None]) -> None:
    """Pause or resume ``vm`` (its name as provd listed it)."""
    label, method = VM_ACTIONS[action]
    _call(conn, (names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE, method),
          GLib.Variant("(s)", (vm,)), "(as)", TIMEOUT_MS, f"{label} {vm}: ",
          lambda r: done(vm_result_text(action, vm, r)), done)


def _call(conn: Any, where: tuple[str, str, str, str], args: Any, reply: str, timeout: int,
          prefix: str, answered: Callable[[Any], None], done: Callable[[str], None]) -> None:
    """One call; its unpacked reply to ``answered``, or its error's text to ``done``."""
    def finish(c: Any, res: Any) -> None:
        try:
            result = c.call_finish(res).unpack()
        except GLib.Error as err:
            Gio.DBusError.strip_remote_error(err)
            done(prefix + err.message)
            return
        answered(result)
    conn.call(*where, args, GLib.VariantType.new(reply),
              Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION, timeout, None, finish)
