"""The shell's idle hint for logind (shell/idle.py): sent when it changes, never per event."""

from __future__ import annotations

from vmclient.shell.idle import IdleClock


def test_the_session_is_idle_after_a_while_without_input_and_in_use_at_the_next_input():
    c = IdleClock(1000.0, idle_after=600)
    assert c.check(1000.0) is False  # the first hint: in use (logind's default, said)
    assert c.check(1599.0) is None  # unchanged: nothing sent
    assert c.check(1600.0) is True  # ten minutes without input
    assert c.check(1700.0) is None
    assert c.input(1701.0) is False  # a key, a pointer move: in use again
    assert c.input(1702.0) is None  # not once per event
    assert c.check(2301.0) is None and c.check(2302.0) is True


def test_an_input_stamped_out_of_order_does_not_move_the_clock_back():
    c = IdleClock(1000.0, idle_after=600)
    c.input(1500.0)
    c.input(1200.0)  # an older event delivered late
    assert c.check(2099.0) is None and c.check(2100.0) is True
