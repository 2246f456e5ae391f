"""The restore page's choices and words (the bar menu's "Restore a VM…"): pure.

What is offered: provd's ``ListRestorable`` (the VMs the datacenter keeps for this
laptop, with their latest snapshot), less every VM the shell lists here: a VM on the
laptop is never replaced from the shell, since its newer local state would be lost.
A restore is provd's ``RestoreStreamed``: the VM runs within seconds while its disk
streams in; how far (provd's ``Fills``) is said until the disk is all here.  A refusal
is said in words a person can act on (:func:`failure_text`), never as a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ERROR = "org.vmclient.VMClient1.Error."
NOTE = ("The VMs the datacenter keeps for this laptop.  A restored VM runs within "
        "seconds while its disk streams in: keep the laptop on the network until all of "
        "it is here.  A VM already on this laptop is not offered: restoring it would "
        "throw away what it has here.")
NOTHING = "Nothing to restore: the datacenter keeps no VM for this laptop that is not here"


@dataclass(frozen=True)
class Offer:
    vm: str
    snapshot: str
    time: int  # unix seconds the snapshot became the latest, 0 unknown


def offers(untrusted_rows: Iterable[Any], here: Iterable[str]) -> list[Offer]:
    """``ListRestorable``'s rows (vm, snapshot, time), less the VMs here, by name."""
    here = set(here)
    out = {}
    for row in untrusted_rows:
        try:
            vm, snapshot, at = str(row[0])[:40], str(row[1])[:40], int(row[2])
        except (TypeError, ValueError, IndexError):
            continue
        if vm and vm not in here:
            out[vm] = Offer(vm, snapshot, max(0, at))
    return [out[vm] for vm in sorted(out)]


def offer_text(o: Offer, now: float | None = None) -> str:
    """The button: "Restore crm (saved Mon 14:05)"; the snapshot's label without a time."""
    return f"Restore {o.vm} ({_when(o.time, now) if o.time else 'snapshot ' + o.snapshot})"


def _when(unix: int, now: float | None) -> str:
    try:
        t = time.localtime(unix)
        today = time.localtime(time.time() if now is None else now)
    except (OverflowError, OSError, ValueError):
        return "saved at an unknown time"
    if t[:3] == today[:3]:
        return time.strftime("saved today %H:%M", t)
    return time.strftime("saved %a %d %b %H:%M" if t[0] == today[0] else "saved %d %b %Y", t)


def failure_text(vm: str, error: str, message: str) -> str:
    """A refused or failed restore, in words: what happened, what to do (``error``: the
    D-Bus error's name, ``message``: provd's words)."""
    if "exists already" in message:
        return f"{vm} is on this laptop already: it is not replaced"
    return f"{vm} was not restored: {_why(error, message)}"


def list_failure_text(error: str, message: str) -> str:
    """``ListRestorable`` failed, in words."""
    return f"The VMs to restore are not known: {_why(error, message)}"


def _why(error: str, message: str) -> str:
    short = error.removeprefix(ERROR)
    if short == "RemoteUnavailable" or "does not answer" in message:
        return ("the datacenter does not answer.  Check the network (Wi-Fi, at the right of "
                "the bar), then try again")
    if short == "RemoteRefused":
        return "the datacenter refused this laptop; tell IT"
    if short == "RemoteIntegrity":
        return "what the datacenter sent failed its check (none of it was used); tell IT"
    if "may not start" in message:  # the start gate: its reason says what to do
        why = message.split("may not start:", 1)[-1].strip()
        return f"it may not run on this laptop now: {why}"
    if short == "VMNotFound":
        return "the datacenter keeps no copy of it for this laptop; tell IT"
    if short == "PermissionDenied" or error.endswith(".AccessDenied"):
        return "you may not restore VMs on this laptop; tell IT"
    if error.endswith(".NoReply") or short == "Timeout":
        return "the VM service did not answer in time (the bar says whether it goes on)"
    return message


def fill_text(restored: Iterable[str], seen: Iterable[str], filling: Mapping[str, int]) -> str:
    """How far the disks of the VMs this page restored are (``filling``:
    :func:`.bar.fill_percents`),
    one VM a line: "crm runs; 42% of its disk is here (it needs the network until all of
    it is)"; once a VM ``seen`` filling is no longer: "all of its disk is here"."""
    seen = set(seen)
    lines = []
    for vm in restored:
        if vm in filling:
            lines.append(f"{vm} runs; {filling[vm]}% of its disk is here (it needs the network "
                         "until all of it is)")
        elif vm in seen:
            lines.append(f"{vm} runs; all of its disk is here: it no longer needs the network")
        else:
            lines.append(f"{vm} runs; its disk streams in from the datacenter")
    return "\n".join(lines)
