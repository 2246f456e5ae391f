"""The Super key, held back from the guest until the shell knows what it is for.

Every hotkey of the shell is Super+<key>, and a guest must never see any part of one (a
Windows guest opens its Start menu on a Super press and release).  So a Super press meant
for the shown VM goes nowhere at first (as a VM viewer's host key):

- the next key is a hotkey (or a key of a page of the shell's): the guest never sees
  Super, not even when it is released;
- the next key goes to the guest: the guest gets Super down first, then that key (so a
  guest's own Super+E still works), and Super's release reaches it as usual;
- Super is released alone: the guest gets a tap (down and up), so the Windows key alone
  still opens the guest's Start menu;
- the window loses the keyboard while Super is held back: it is forgotten (the guest never
  saw it).

No GTK here: values in, values out (tests/unit/shell/test_superkey.py).  The adapter
(:mod:`.keys`) sends what :class:`Step` says through spice-gtk's ``send_keys``, which
enters the key in the display's table of keys down: spice-gtk forwards the real release
only of a key in that table, drops the release of any other, and releases every key in it
when the display loses the keyboard focus.  So no key stays down in a guest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SUPER_KEYS = frozenset({"Super_L", "Super_R"})  # GDK's key names


class Send(enum.Enum):
    """What the shown VM gets (spice-gtk's SPICE_DISPLAY_KEY_EVENT_…)."""

    PRESS = "press"
    CLICK = "click"  # a press and its release


@dataclass(frozen=True)
class Hold:
    key: str | None = None  # the Super key held back ("Super_L"), None: none
    used: bool = False  # the shell took a key meanwhile: its release is no tap


@dataclass(frozen=True)
class Step:
    hold: Hold
    send: tuple[tuple[Send, str], ...] = ()  # to the shown VM, before anything else
    taken: bool = False  # the event stops here (else the shell's other rules decide)


def press(hold: Hold, name: str, to_guest: bool) -> Step:
    """A key press; ``to_guest``: the key would go to the shown VM (it is no hotkey, no
    page of the shell's has the keys)."""
    if hold.key is not None:
        if name in SUPER_KEYS:  # its auto-repeat, or the other Super key
            return Step(hold, taken=True)
        if to_guest:  # Super+<a key of the guest's>: Super is the guest's now
            return Step(Hold(), ((Send.PRESS, hold.key),))
        return Step(Hold(hold.key, used=True))
    if name in SUPER_KEYS and to_guest:
        return Step(Hold(name), taken=True)
    return Step(hold)


def release(hold: Hold, name: str, to_guest: bool) -> Step:
    """A key release; ``to_guest``: keys go to the shown VM now."""
    if hold.key is not None and name == hold.key:
        tap = to_guest and not hold.used
        return Step(Hold(), ((Send.CLICK, name),) if tap else (), taken=True)
    return Step(hold)


def focus_out(_hold: Hold) -> Hold:
    """The window lost the keyboard: a Super held back is forgotten (the guest never saw
    it); what the guest did see, spice-gtk releases itself."""
    return Hold()
