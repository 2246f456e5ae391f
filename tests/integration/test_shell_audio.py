"""The shell's say over a VM's audio (shell/sound.py), on spice-gtk's own objects.

A session with spice-gtk's audio (``SpiceAudio``, GStreamer) and the record and
playback channels QEMU's SPICE server offers for a VM with a sound card.  The
echo guests cannot play or record (a boot sector drives no sound card), so the
channel signals a guest causes (``record-start`` when it opens its microphone,
``playback-data`` while it plays) are emitted here, as spice-gtk emits them; what
is asserted is whether they reach the handlers connected after the shell's, where
spice-gtk's audio has its own (which opens the microphone, or plays the samples).
No daemon, no display: about a second.
"""

from __future__ import annotations

import pytest

from testlib import need

PLAYBACK, RECORD = 5, 6  # SPICE_CHANNEL_PLAYBACK, SPICE_CHANNEL_RECORD
S16 = 1  # SPICE_AUDIO_FMT_S16


@pytest.fixture
def spice():
    try:
        import gi

        gi.require_version("SpiceClientGLib", "2.0")
        from gi.repository import SpiceClientGLib
    except (ImportError, ValueError):
        need(False, "spice-gtk's introspection data (gir1.2-spiceclientglib-2.0) is missing")
    return SpiceClientGLib


def test_only_a_vm_allowed_to_gets_the_microphone_and_a_muted_vm_plays_nothing(spice):
    from vmclient.shell.sound import VMSound

    session = spice.Session()
    sound = VMSound("work", session)
    record = spice.Channel.new(session, RECORD, 0)
    playback = spice.Channel.new(session, PLAYBACK, 0)
    assert isinstance(record, spice.RecordChannel)
    assert isinstance(playback, spice.PlaybackChannel)
    reached: list[tuple[object, ...]] = []  # what the handlers after the shell's saw
    # (a channel's own connect() is SPICE's: GObject's is GObject.Object.connect)
    from gi.repository import GObject

    connect = GObject.Object.connect
    connect(record, "record-start", lambda _c, *a: reached.append(("start", *a)))
    connect(record, "record-stop", lambda _c: reached.append(("stop",)))
    connect(playback, "playback-data", lambda _c, *_a: reached.append(("data",)))

    # The VM asks for the microphone while it may not have it (not shown): refused.
    record.emit("record-start", S16, 2, 48000)
    assert reached == []
    # Shown: it gets the microphone it asked for, as it asked for it.
    sound.allow_recording(True)
    assert reached == [("start", S16, 2, 48000)]
    # Switched away: its recording stops; shown again: it records again.
    sound.allow_recording(False)
    assert reached[-1] == ("stop",)
    sound.allow_recording(True)
    assert reached[-1] == ("start", S16, 2, 48000)
    # The guest stops recording itself: nothing to give it when it is shown next.
    record.emit("record-stop")
    sound.allow_recording(False)
    sound.allow_recording(True)
    assert reached[-1] == ("stop",) and reached.count(("start", S16, 2, 48000)) == 2

    # Playback: heard unless the bar muted it; the guest cannot undo the shell's mute.
    del reached[:]
    playback.emit("playback-data", None, 0)
    assert reached == [("data",)]
    sound.mute(True)
    playback.props.mute = False  # the guest's own mute: not the shell's
    playback.emit("playback-data", None, 0)
    assert reached == [("data",)]
    sound.mute(False)
    playback.emit("playback-data", None, 0)
    assert reached == [("data",), ("data",)]
