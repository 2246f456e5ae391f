"""Audio's policy (pure): the microphone to the shown VM only, a per-VM mute."""

from __future__ import annotations

from vmclient.shell.audio import button_text, may_record, toggled


def test_the_microphone_goes_to_the_shown_vm_only_and_never_while_locked():
    assert may_record("work", "work", locked=False, first_start=False)
    assert not may_record("home", "work", locked=False, first_start=False)  # isolation
    assert not may_record("work", "work", locked=True, first_start=False)
    assert not may_record("work", "work", locked=False, first_start=True)
    assert not may_record("work", None, locked=False, first_start=False)


def test_the_mute_is_per_vm_and_the_bar_says_it_for_the_shown_vm():
    muted = toggled(frozenset(), "home")
    assert muted == {"home"} and toggled(muted, "home") == frozenset()
    assert button_text("home", muted) == "Sound: off"
    assert button_text("work", muted) == "Sound: on"
    assert button_text(None, muted) == ""
