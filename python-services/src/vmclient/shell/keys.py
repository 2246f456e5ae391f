"""The window's keys: which are the shell's (a hotkey, a page of its own, the lock) and
which reach the VM shown.

GTK runs the window's ``key-press-event`` handler before the focused widget (the
VM's SPICE display) sees a key: :func:`pressed` answers True for a key the shell
took, which then never reaches a guest.  A Super press for the VM is held back until the
next key says whether it starts a hotkey (:mod:`.superkey`).
"""

from __future__ import annotations

from typing import Any

import gi

from . import state, superkey

gi.require_version("Gdk", "3.0")
gi.require_version("SpiceClientGtk", "3.0")
from gi.repository import Gdk, SpiceClientGtk  # noqa: E402

SEND = {superkey.Send.PRESS: SpiceClientGtk.DisplayKeyEvent.PRESS,
        superkey.Send.CLICK: SpiceClientGtk.DisplayKeyEvent.CLICK}


def key_of(event: Any) -> state.Key:
    m = event.state
    return state.Key(
        name=Gdk.keyval_name(event.keyval) or "",
        super_=bool(m & (Gdk.ModifierType.SUPER_MASK | Gdk.ModifierType.MOD4_MASK)),
        shift=bool(m & Gdk.ModifierType.SHIFT_MASK),
        ctrl=bool(m & Gdk.ModifierType.CONTROL_MASK),
        alt=bool(m & Gdk.ModifierType.MOD1_MASK))


def pressed(shell: Any, event: Any) -> bool:
    """A key press on ``shell``'s window (a :class:`.window.Shell`): True if the shell took
    it; False lets GTK deliver it to the focused widget (the VM's, or a field of the
    install page)."""
    key = key_of(event)
    st = shell.state
    cmd = state.hotkey(key)
    if _super(shell, superkey.press(shell.hold, key.name,
                                    cmd is None and _to_guest(shell))):
        return True
    if shell.first_open and not st.locked:  # every key is the first start's
        shell.first.key(event, key.name)
        return True
    if cmd is not None:
        shell.run(cmd)
        return True
    if st.locked:  # no key reaches a VM: the password field's, or none
        if not st.asleep:
            shell.lock_page.key(event)
        return True
    if st.install or st.restore:  # the page's fields have the keys (no VM is focused)
        if key.name != "Escape":
            return False
        shell.state = state.close_restore(state.close_install(st))
    elif st.networks:  # every key is the Wi-Fi page's
        if key.name != "Escape":
            shell.networks.key(event)
            return True
        shell.state = state.close_networks(st)
    elif st.overview:  # every key is the overview's
        shell.state = state.overview_key(st, key)
    else:
        return False
    shell.render()
    return True


def released(shell: Any, event: Any) -> bool:
    if _super(shell, superkey.release(shell.hold, key_of(event).name, _to_guest(shell))):
        return True
    st = shell.state
    return (st.locked or st.overview or st.networks or shell.first_open
            or state.hotkey(key_of(event)) is not None)


def focus_out(shell: Any) -> bool:
    """The window lost the keyboard: False, GTK goes on (the VM's display hears of it)."""
    shell.hold = superkey.focus_out(shell.hold)
    return False


def _to_guest(shell: Any) -> bool:
    """Keys go to the shown VM now (no page of the shell's has them)."""
    return not shell.first_open and shell.current_display() is not None


def _super(shell: Any, step: superkey.Step) -> bool:
    """Do what ``step`` says: the shown VM gets its keys (as keyvals, which spice-gtk
    maps to the keyboard's scancodes and enters in its table of keys down)."""
    shell.hold = step.hold
    display = shell.current_display()
    for kind, name in step.send:
        if display is not None:
            display.send_keys([Gdk.keyval_from_name(name)], SEND[kind])
    return step.taken
