"""The Super key held back from the guest: what the guest gets for each press and release.

The guest's side is spice-gtk's, as its display does it (spice-widget.c, ``send_key``):
a press enters the key in its table of keys down and goes to the guest; a release goes to
the guest only for a key in that table; losing the keyboard focus releases every key in
it.  ``send_keys`` (the shell's) goes through the same table.
"""

from __future__ import annotations

from vmclient.shell.state import Key, hotkey
from vmclient.shell.superkey import Hold, Send, focus_out, press, release


class Desk:
    """The shell's rule (a hotkey is the shell's, every other key the shown VM's) and the
    shown VM's spice-gtk display, recording what the guest gets."""

    def __init__(self) -> None:
        self.hold = Hold()
        self.down: set[str] = set()  # spice-gtk's table of keys down
        self.guest: list[str] = []  # "+Super_L" down, "-Super_L" up
        self.hotkeys: list[str] = []  # the shell's commands run

    def _to_display(self, name: str, down: bool) -> None:
        if down:
            self.down.add(name)
            self.guest.append(f"+{name}")
        elif name in self.down:
            self.down.discard(name)
            self.guest.append(f"-{name}")

    def _send(self, sends: tuple[tuple[Send, str], ...]) -> None:
        for kind, name in sends:
            self._to_display(name, True)
            if kind == Send.CLICK:
                self._to_display(name, False)

    def press(self, name: str, super_: bool = False) -> None:
        cmd = hotkey(Key(name, super_=super_))
        step = press(self.hold, name, to_guest=cmd is None)
        self.hold = step.hold
        self._send(step.send)
        if step.taken:
            return
        if cmd is not None:
            self.hotkeys.append(cmd.value)
        else:
            self._to_display(name, True)

    def release(self, name: str, super_: bool = False) -> None:
        step = release(self.hold, name, to_guest=True)
        self.hold = step.hold
        self._send(step.send)
        if not step.taken and hotkey(Key(name, super_=super_)) is None:
            self._to_display(name, False)

    def focus_out(self) -> None:
        self.hold = focus_out(self.hold)
        for name in sorted(self.down):
            self._to_display(name, False)

    def key(self, name: str, super_: bool = False) -> None:
        self.press(name, super_)
        self.release(name, super_)


def test_super_and_a_hotkey_never_reach_the_guest():
    d = Desk()
    d.press("Super_L")
    d.key("Tab", super_=True)
    d.key("Tab", super_=True)  # Super still held: the next VM again
    d.release("Super_L", super_=True)
    assert d.hotkeys == ["next", "next"]
    assert d.guest == [] and d.down == set()


def test_super_and_a_key_of_the_guests_reach_it_in_order():
    d = Desk()
    d.press("Super_L")
    assert d.guest == []  # held back until the next key says what it is for
    d.key("e", super_=True)
    d.release("Super_L", super_=True)
    assert d.guest == ["+Super_L", "+e", "-e", "-Super_L"]
    assert d.down == set() and d.hotkeys == []


def test_super_alone_is_a_tap_for_the_guest():
    d = Desk()
    d.press("Super_R")
    d.press("Super_R")  # its auto-repeat
    d.release("Super_R")
    assert d.guest == ["+Super_R", "-Super_R"] and d.down == set()


def test_super_held_while_the_window_loses_the_keyboard_reaches_no_guest():
    d = Desk()
    d.press("Super_L")
    d.focus_out()
    d.release("Super_L")  # comes back after the focus did (or never): dropped
    assert d.guest == [] and d.down == set()


def test_super_sent_to_the_guest_is_released_when_the_window_loses_the_keyboard():
    d = Desk()
    d.press("Super_L")
    d.press("e", super_=True)
    d.focus_out()  # spice-gtk releases what the guest has down
    d.release("e", super_=True)
    d.release("Super_L", super_=True)
    assert d.guest == ["+Super_L", "+e", "-Super_L", "-e"] and d.down == set()


def test_after_a_hotkey_super_goes_with_the_next_key_of_the_guests_and_is_no_tap():
    d = Desk()
    d.press("Super_L")
    d.key("Tab", super_=True)
    d.key("e", super_=True)
    d.release("Super_L", super_=True)
    assert d.hotkeys == ["next"]
    assert d.guest == ["+Super_L", "+e", "-e", "-Super_L"]
    d.press("Super_L")
    d.key("space", super_=True)
    d.release("Super_L", super_=True)
    assert d.hotkeys == ["next", "overview"] and len(d.guest) == 4  # no tap


def test_a_super_press_for_a_page_of_the_shells_is_not_held():
    step = press(Hold(), "Super_L", to_guest=False)
    assert step == press(Hold(), "Super_L", to_guest=False) and not step.taken
    assert step.hold == Hold() and step.send == ()
    # held, then released where no VM has the keys (a page opened): no tap
    step = release(Hold("Super_L"), "Super_L", to_guest=False)
    assert step.taken and step.send == () and step.hold == Hold()


def test_other_keys_pass_untouched():
    d = Desk()
    d.key("a")
    d.press("Shift_L")
    d.key("A")
    d.release("Shift_L")
    assert d.guest == ["+a", "-a", "+Shift_L", "+A", "-A", "-Shift_L"]
