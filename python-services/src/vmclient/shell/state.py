"""The shell's pure core: which VM is shown, the switcher's order, zones, the lock.

No GTK, no D-Bus: values in, values out (tests/unit/shell).  The GTK adapter
(:mod:`.window`) feeds it the VM list and key presses and draws what
:func:`view` says.

- The switcher's order: business VMs first, then private ones, each by name;
  only running or paused VMs can be shown (a shut-off one has no display).
- The hotkeys are the shell's, never the guest's: the adapter consumes a key
  press :func:`hotkey` maps, so no guest sees it (and a guest cannot make one:
  its only input is what the shell forwards).
- The overview (``Super+Space``) shows every VM that can be shown as a live
  thumbnail framed in its zone's colour; one key (its number, or the arrows and
  Return) or a click switches, Escape goes back.
- Locked, the screen shows nothing of any VM, whatever else happens.
- A VM the person has just installed is shown as soon as it can be
  (:func:`expect`): the installer's display appears when the VM starts.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any


class Zone(enum.Enum):
    BUSINESS = "business"
    PRIVATE = "private"
    UNKNOWN = "unknown"

    @classmethod
    def of(cls, kind: str) -> Zone:
        try:
            return cls(kind)
        except ValueError:
            return cls.UNKNOWN


# Frame and bar colours (RGB): drawn by the shell around and above the guest's
# picture, where no guest pixel can go.  Blue for business, orange for private
# (as XenClient and Qubes mark trust with a colour the guest cannot draw over).
ZONE_COLOURS: dict[Zone, tuple[int, int, int]] = {
    Zone.BUSINESS: (0x1E, 0x5A, 0xC8),
    Zone.PRIVATE: (0xE6, 0x7E, 0x00),
    Zone.UNKNOWN: (0x80, 0x80, 0x80),
}

# "starting": provd's word for a VM whose QEMU is being started (its display opens
# once the start is done: the installer's display appears at once).
SHOWABLE = frozenset({"running", "starting", "paused", "blocked"})


@dataclass(frozen=True)
class VMEntry:
    name: str
    zone: Zone
    state: str  # as provd reports it: running, starting, paused, shutoff, ...
    detail: str = ""  # why it is not running, in words (the bar's); "" = the state

    @property
    def showable(self) -> bool:
        return self.state in SHOWABLE


class Command(enum.Enum):
    NEXT = "next"
    PREVIOUS = "previous"
    LOCK = "lock"
    OVERVIEW = "overview"
    NETWORKS = "networks"
    MENU = "menu"  # the bar's "Menu" (the adapter opens it over a VM or the no-VM page)


@dataclass(frozen=True)
class Key:
    """A key press as the adapter sees it: the key's name (GDK's) and the modifiers."""

    name: str
    super_: bool = False
    shift: bool = False
    ctrl: bool = False
    alt: bool = False


HOTKEYS: dict[Key, Command] = {
    Key("Tab", super_=True): Command.NEXT,
    Key("ISO_Left_Tab", super_=True, shift=True): Command.PREVIOUS,
    Key("Tab", super_=True, shift=True): Command.PREVIOUS,
    Key("space", super_=True): Command.OVERVIEW,
    Key("l", super_=True): Command.LOCK,
    Key("n", super_=True): Command.NETWORKS,
    Key("m", super_=True): Command.MENU,
}


def hotkey(key: Key) -> Command | None:
    """The shell's command for ``key``, or None: the key belongs to the guest."""
    return HOTKEYS.get(key)


@dataclass(frozen=True)
class State:
    vms: tuple[VMEntry, ...] = ()  # in switcher order
    current: str | None = None
    locked: bool = False
    asleep: bool = False  # between PrepareForSleep(true) and (false)
    overview: bool = False
    selected: str | None = None  # in the overview
    networks: bool = False  # the Wi-Fi page is open
    install: bool = False  # the page "install a private VM from media" is open
    restore: bool = False  # the page "restore a VM from the datacenter" is open
    expected: str | None = None  # to be shown as soon as it can be (a new VM)
    list_error: str = ""  # why the last VM list failed ("" = it came)


def switcher_order(vms: Iterable[VMEntry]) -> tuple[VMEntry, ...]:
    rank = {Zone.BUSINESS: 0, Zone.PRIVATE: 1, Zone.UNKNOWN: 2}
    return tuple(sorted(vms, key=lambda v: (rank[v.zone], v.name)))


def with_vms(state: State, vms: Iterable[VMEntry]) -> State:
    """A new VM list: the shown VM stays if it can still be shown, else the first that can;
    a VM :func:`expect` ed is shown once it can be."""
    ordered = switcher_order(vms)
    showable = [v.name for v in ordered if v.showable]
    current = state.current if state.current in showable else (showable[0] if showable
                                                                else None)
    expected = state.expected
    if expected in showable:
        current, expected = expected, None
    selected = state.selected if state.selected in showable else current
    return replace(state, vms=ordered, current=current, selected=selected,
                   overview=state.overview and bool(showable), expected=expected)


def expect(state: State, name: str) -> State:
    """Show ``name`` as soon as it can be shown (now, or when a VM list has it running)."""
    return with_vms(replace(state, expected=name), state.vms)


# The shell's own pages over the VMs: at most one is open.
PAGES = ("overview", "networks", "install", "restore")


def _pages_closed(state: State, **changes: Any) -> State:
    """``state`` with every page of :data:`PAGES` closed, then ``changes`` (a page opened)."""
    return replace(state, **({page: False for page in PAGES} | changes))


def open_install(state: State) -> State:
    """The bar menu's "Install a private VM…": the page that installs a private VM from
    media (not while locked)."""
    return state if state.locked else _pages_closed(state, install=True)


def close_install(state: State) -> State:
    return replace(state, install=False)


def open_restore(state: State) -> State:
    """The bar menu's "Restore a VM…": the page that restores a VM from the datacenter
    (not while locked)."""
    return state if state.locked else _pages_closed(state, restore=True)


def close_restore(state: State) -> State:
    return replace(state, restore=False)


def list_failed(state: State, error: str) -> State:
    """The VM list did not come (provd not answering): the VMs stay as they were (a
    display keeps showing its VM), but what the bar says of them is not known now."""
    return replace(state, list_error=error or "no answer")


def listed(state: State) -> State:
    """A VM list came from provd (then :func:`with_vms`, which alone is also the old
    list with new details: what powerd says of the VMs)."""
    return replace(state, list_error="")


def showable_names(state: State) -> list[str]:
    return [v.name for v in state.vms if v.showable]


def _step(state: State, delta: int) -> State:
    showable = [v.name for v in state.vms if v.showable]
    if not showable:
        return replace(state, current=None)
    if state.current not in showable:
        return replace(state, current=showable[0])
    i = showable.index(state.current)
    return replace(state, current=showable[(i + delta) % len(showable)])


def select(state: State, name: str) -> State:
    """Show ``name`` (if it can be shown)."""
    if any(v.name == name and v.showable for v in state.vms):
        return replace(state, current=name)
    return state


def command(state: State, cmd: Command) -> State:
    """A hotkey's effect.  Switching while locked does nothing (the lock hides it all)."""
    if cmd == Command.LOCK:
        return lock(state)
    if state.locked or cmd == Command.MENU:  # the bar's menu is not the core's
        return state
    if cmd == Command.NETWORKS:
        return _pages_closed(state, networks=not state.networks)
    if cmd == Command.OVERVIEW:
        if state.overview or not showable_names(state):
            return replace(state, overview=False)
        return _pages_closed(state, overview=True, selected=state.current)
    return _pages_closed(_step(state, 1 if cmd == Command.NEXT else -1))


def overview_key(state: State, key: Key) -> State:
    """A key while the overview is open (every key is the shell's then)."""
    names = showable_names(state)
    if not state.overview or not names:
        return replace(state, overview=False)
    i = names.index(state.selected) if state.selected in names else 0
    if key.name in ("Right", "Down", "Tab"):
        return replace(state, selected=names[(i + 1) % len(names)])
    if key.name in ("Left", "Up", "ISO_Left_Tab"):
        return replace(state, selected=names[(i - 1) % len(names)])
    if key.name in ("Return", "KP_Enter", "space"):
        return replace(state, current=names[i], overview=False)
    if key.name == "Escape":
        return replace(state, overview=False)
    if key.name.isdigit() and 1 <= int(key.name) <= len(names):
        return replace(state, current=names[int(key.name) - 1], overview=False)
    return state


def choose(state: State, name: str) -> State:
    """A click on ``name``'s thumbnail."""
    return replace(select(state, name), overview=False)


def lock(state: State) -> State:
    return _pages_closed(state, locked=True)


def close_networks(state: State) -> State:
    return replace(state, networks=False)


def unlock(state: State) -> State:
    """Unlocked (the user proved who they are); never while the host is going to sleep."""
    return state if state.asleep else replace(state, locked=False)


def sleep(state: State) -> State:
    """The host is going to sleep: locked first, whatever was shown."""
    return replace(lock(state), asleep=True)


def wake(state: State) -> State:
    """The host woke up: still locked until the user unlocks."""
    return replace(state, asleep=False)


LIST_FAILED = "Cannot list the VMs"


@dataclass(frozen=True)
class View:
    """What the screen shows."""

    page: str  # "vm", "none" (no VM to show), "overview", "networks", "install", "restore"
    # or "lock"
    vm: str | None
    zone: Zone
    colour: tuple[int, int, int]
    title: str


def shown(state: State) -> VMEntry | None:
    """The VM shown (or that would be, behind a page of the shell's)."""
    return next((v for v in state.vms if v.name == state.current), None)


def view(state: State) -> View:
    if state.locked:
        return View("lock", None, Zone.UNKNOWN, (0, 0, 0), "Locked")
    if state.networks:
        return View("networks", None, Zone.UNKNOWN, ZONE_COLOURS[Zone.UNKNOWN],
                    "Wi-Fi networks  (Escape: back)")
    if state.install:
        return View("install", None, Zone.UNKNOWN, ZONE_COLOURS[Zone.UNKNOWN],
                    "Install a private VM from media  (Escape: back)")
    if state.restore:
        return View("restore", None, Zone.UNKNOWN, ZONE_COLOURS[Zone.UNKNOWN],
                    "Restore a VM from the datacenter  (Escape: back)")
    if state.overview:
        return View("overview", None, Zone.UNKNOWN, ZONE_COLOURS[Zone.UNKNOWN],
                    "Switch to\u2026  (number, arrows and Return, or a click; Escape)")
    entry = shown(state)
    if entry is None:
        return View("none", None, Zone.UNKNOWN, ZONE_COLOURS[Zone.UNKNOWN],
                    f"{LIST_FAILED}: {state.list_error}" if state.list_error
                    else "No VM running")
    title = f"{entry.name} \u2014 {entry.zone.value}"
    if state.list_error:  # its state as last listed may be stale
        title += " (cannot list the VMs: its state is unknown)"
    elif entry.state != "running":
        title += f" ({entry.detail or entry.state})"
    return View("vm", entry.name, entry.zone, ZONE_COLOURS[entry.zone], title)
