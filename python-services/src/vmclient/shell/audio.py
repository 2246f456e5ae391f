"""Audio (pure): which VM hears the microphone, which VMs are heard.

Each VM's SPICE session has a playback and a record channel where its domain
has a sound device with SPICE audio; spice-gtk plays and records through
GStreamer.  The shell's policy over it:

- **The microphone goes to one VM at most**: the shown VM, while the screen is
  unlocked and the first start closed.  Business and private are isolated: a
  VM that is not shown never records, whatever it asks (its ``record-start``
  waits until it is shown; switching away stops its recording).
- **Every VM is heard unless muted**: a per-VM mute in the bar (for the shown
  VM), which the guest cannot undo (its own mute and volume are the guest's,
  this one is the shell's).
"""

from __future__ import annotations


def may_record(vm: str, shown: str | None, locked: bool, first_start: bool) -> bool:
    return vm == shown and not locked and not first_start


def toggled(muted: frozenset[str], vm: str) -> frozenset[str]:
    """The per-VM mute switched for ``vm``."""
    return muted - {vm} if vm in muted else muted | {vm}


def button_text(shown: str | None, muted: frozenset[str]) -> str:
    """The bar's sound button for the shown VM ("" without one)."""
    if shown is None:
        return ""
    return "Sound: off" if shown in muted else "Sound: on"
