"""The shell's say over a VM's audio (shell/sound.py): on spice-gtk's own objects, and
end to end with guests that play and record.

The first test: a session with spice-gtk's audio (``SpiceAudio``, GStreamer) and
the record and playback channels QEMU's SPICE server offers for a VM with a sound
card, without a guest: the channel signals a guest causes (``record-start`` when
it opens its microphone, ``playback-data`` while it plays) are emitted here, as
spice-gtk emits them, including the replays of a request once allowed and a guest
stopping by itself; what is asserted is whether they reach the handlers connected
after the shell's, where spice-gtk's audio has its own (which opens the
microphone, or plays the samples).  No daemon, no display: about a second.

The second, end to end: two guests on the real libvirtd that play a sine each on
an emulated sound card and record their microphone (sound_guest.py), vmclient-provd
handing the shell each VM's SPICE fd, the shell on a headless Weston with
spice-gtk's own audio playing and recording through a real sound server
(sound_server.py: its speakers are recorded, its microphone is a sine).  What the
speakers play and what each guest recorded show the policy: every VM heard (shown
or not) unless muted, the microphone to the shown VM only, none while locked.
25-29 s at a load average of 11-15 (TCG guests boot in under a second; the waits
poll, and each state must last a second).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
import sound_guest
from echo_guest import echo_guests
from fixtures_bus import PrivateSystemBus
from fixtures_virt import scaled
from powerd_harness import Logind
from provd_harness import ProvDaemon
from shell_harness import USER, ShellUnderTest, Weston
from sound_server import SoundServer

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


WORK_HZ, HOME_HZ, MIC_HZ = 700, 1100, 400  # what each guest plays; the microphone
HEARD = 1500.0  # Goertzel level of a sine played: the guests' (12000 peak) give ~6000
SILENT = 150.0  # of one not played: ~0 (PulseAudio's mixing and resampling add little)
HOLD = 1.0  # seconds a state must last to count
KEY_TAB, KEY_L = 15, 38


def wait_for(pred: Callable[[], Any], timeout: float, what: Callable[[], str],
             hold: float = 0.0) -> None:
    """Until ``pred`` holds, and has held for ``hold`` seconds on end (a VM that is not
    heard yet may only be starting: silence must last)."""
    deadline = time.monotonic() + scaled(timeout)
    since: float | None = None
    while True:
        now = time.monotonic()
        if pred():
            since = now if since is None else since
            if now - since >= hold:
                return
        else:
            since = None
        if now > deadline:
            raise AssertionError(f"timed out waiting for {what()}")
        time.sleep(0.1)


class Band:
    """The shell with two playing and recording guests, its speakers and microphone."""

    def __init__(self, conn: libvirt.virConnect, sound: SoundServer, shell: ShellUnderTest,
                 work: str, home: str) -> None:
        self.conn, self.sound, self.shell, self.work, self.home = conn, sound, shell, work, home
        self.last: dict[str, Any] = {}

    def log(self) -> str:
        """The end of the shell's log, without GTK's complaints about the headless seat."""
        lines = [ln for ln in self.shell.log().splitlines() if ln and "Gdk-CRITICAL" not in ln]
        return "\n".join(lines[-40:])

    def speakers(self) -> dict[str, float]:
        """How loud each guest's sine is in what the speakers play (0.25 s of it)."""
        rec = self.sound.record(0.25)
        return {self.work: sound_guest.level(rec, WORK_HZ),
                self.home: sound_guest.level(rec, HOME_HZ)}

    def microphones(self) -> dict[str, float | None]:
        """How loud the microphone's sine is in the last 0.1 s each guest recorded (None:
        its recording has not run: its buffer still holds what the guest put there)."""
        out: dict[str, float | None] = {}
        for vm in (self.work, self.home):
            pcm = self.conn.lookupByName(vm).memoryPeek(
                sound_guest.RECORDED, sound_guest.RECORDED_BYTES, libvirt.VIR_MEMORY_PHYSICAL)
            samples = sound_guest.left(pcm)
            untouched = all(v == sound_guest.UNHEARD for v in samples)
            out[vm] = None if untouched else sound_guest.level(samples, MIC_HZ)
        return out

    def _matches(self, heard: set[str], recording: set[str]) -> bool:
        """The speakers play exactly ``heard``'s sines, exactly ``recording`` hear the
        microphone (a recording that has not run is neither loud nor silent)."""
        self.last = {"speakers": self.speakers(), "microphones": self.microphones()}
        return all(level is not None and (level > HEARD if vm in loud else level < SILENT)
                   for loud, levels in ((heard, self.last["speakers"]),
                                        (recording, self.last["microphones"]))
                   for vm, level in levels.items())

    def wait(self, heard: tuple[str, ...], recording: tuple[str, ...]) -> None:
        """Until the speakers play exactly ``heard``'s sines and exactly ``recording`` hear
        the microphone, for :data:`HOLD` seconds on end."""
        wait_for(lambda: self._matches(set(heard), set(recording)), 20,
                 lambda: f"the speakers to play {heard} and {recording} to hear the "
                         f"microphone: {self.last}\n{self.log()}", HOLD)


@pytest.fixture
def band(system_bus: PrivateSystemBus, logind: Logind, tmp_path: Path) -> Iterator[Band]:
    need(os.geteuid() == 0, "needs root (libvirt, setpriv)")
    need(shutil.which("weston") is not None, "weston is not installed")
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed(["org.vmclient.VMClient1.open-display"])  # the seat's active session
    provd = ProvDaemon(system_bus, tmp_path).start()
    sound = weston = shell = None
    try:
        prefix = f"vmca-{uuid.uuid4().hex[:6]}"
        with echo_guests(prefix) as guests:
            work = guests.create("work", "business", 0, "W", image=sound_guest.disk(WORK_HZ),
                                 devices=sound_guest.SOUND_XML)
            home = guests.create("home", "private", 1, "H", image=sound_guest.disk(HOME_HZ),
                                 devices=sound_guest.SOUND_XML)
            sound = SoundServer(USER, MIC_HZ)
            weston = Weston()
            shell = ShellUnderTest(weston, system_bus, tmp_path, prefix + "-",
                                   groups=("vmclient",), env={"PULSE_SERVER": sound.address})
            yield Band(guests.conn, sound, shell, work, home)
            shell.stop()
            assert "Traceback" not in shell.log(), shell.log()
    finally:
        for stop in (shell, weston, sound):
            if stop is not None:
                stop.stop()
        provd.stop()
    assert "Traceback" not in provd.log(), provd.log()


def test_guests_are_heard_unless_muted_and_only_the_shown_one_hears_the_microphone(band):
    b = band
    wait_for(lambda: b.shell.ask("state")["current"] == b.work, 30,
             lambda: f"the shell to show {b.work}\n{b.log()}")
    # Both guests play, the one not shown too: the speakers play both sines.  Only the
    # shown VM hears the microphone; the other records silence.
    b.wait(heard=(b.work, b.home), recording=(b.work,))

    # The bar mutes the shown VM: its sine goes, the other's stays; the microphone stays.
    assert b.shell.ask("click sound") == {"ok": True}
    b.wait(heard=(b.home,), recording=(b.work,))

    # Switched: the microphone goes with the shown VM, the first stays muted.
    b.shell.key(KEY_TAB, "Tab", "super")
    assert b.shell.ask("state")["current"] == b.home
    b.wait(heard=(b.home,), recording=(b.home,))
    # Muting this one too leaves the speakers silent; unmuting brings it back.
    assert b.shell.ask("click sound") == {"ok": True}
    b.wait(heard=(), recording=(b.home,))
    assert b.shell.ask("click sound") == {"ok": True}
    b.wait(heard=(b.home,), recording=(b.home,))

    # Locked: no VM hears the microphone; what plays keeps playing (locking mutes nothing).
    b.shell.key(KEY_L, "l", "super")
    assert b.shell.ask("state")["locked"]
    b.wait(heard=(b.home,), recording=())
