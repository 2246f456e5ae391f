"""One VM's audio through spice-gtk, with the shell's say over it (:mod:`.audio`).

spice-gtk's ``SpiceAudio`` (GStreamer) plays a session's playback channel and,
on the record channel's ``record-start``, captures the microphone and sends it
to the VM.  The shell's handlers on those channel signals run first (they are
connected before spice-gtk's audio connects its own), so:

- a ``record-start`` of a VM that may not record is stopped there: spice-gtk
  never opens the microphone for it.  The request is remembered: when the VM
  may record (it is shown), the shell emits ``record-start`` again with the
  same format; when it may not any more, ``record-stop``;
- while the VM is muted, ``playback-data`` is stopped there: nothing of it is
  played.  (The channel's own ``mute`` property is the guest's to set, so it is
  not used.)
"""

from __future__ import annotations

import logging
from typing import Any

import gi

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib  # noqa: E402

log = logging.getLogger(__name__)


class VMSound:
    def __init__(self, vm: str, session: Any) -> None:
        self.vm = vm
        self.recording_allowed = False
        self.muted = False
        self.recording: tuple[Any, int, int, int] | None = None  # what the VM asked for
        self._replaying = False
        self._playback: list[tuple[Any, int]] = []  # (channel, our playback-data handler)
        # Ours first: spice-gtk's audio connects its channel handlers in its own
        # channel-new handler, which runs after this one.
        GObject.Object.connect(session, "channel-new", self._channel_new)
        self.audio: Any = None
        try:
            self.audio = SpiceClientGLib.Audio.get(session, None)
        except GLib.Error as err:
            log.info("%s: no audio: %s", vm, err.message)

    def _channel_new(self, _session: Any, channel: Any) -> None:
        if isinstance(channel, SpiceClientGLib.RecordChannel):
            GObject.Object.connect(channel, "record-start", self._record_start)
            GObject.Object.connect(channel, "record-stop", self._record_stop)
        elif isinstance(channel, SpiceClientGLib.PlaybackChannel):
            handler = GObject.Object.connect(channel, "playback-data", self._drop)
            if not self.muted:
                GObject.signal_handler_block(channel, handler)
            self._playback.append((channel, handler))

    def _record_start(self, channel: Any, fmt: int, channels: int, rate: int) -> None:
        if not self._replaying:
            self.recording = (channel, fmt, channels, rate)
        if not self.recording_allowed:
            log.info("%s asks for the microphone; not while it is not shown", self.vm)
            GObject.signal_stop_emission_by_name(channel, "record-start")

    def _record_stop(self, _channel: Any) -> None:
        if not self._replaying:
            self.recording = None

    @staticmethod
    def _drop(channel: Any, *_args: Any) -> None:
        GObject.signal_stop_emission_by_name(channel, "playback-data")

    def allow_recording(self, allowed: bool) -> None:
        """Whether the VM may have the microphone now (it is shown, unlocked)."""
        if allowed == self.recording_allowed:
            return
        self.recording_allowed = allowed
        if self.recording is None:
            return
        channel, fmt, channels, rate = self.recording
        self._replaying = True
        try:
            if allowed:
                channel.emit("record-start", fmt, channels, rate)
            else:
                channel.emit("record-stop")
        finally:
            self._replaying = False

    def mute(self, muted: bool) -> None:
        if muted == self.muted:
            return
        self.muted = muted
        for channel, handler in self._playback:
            if muted:
                GObject.signal_handler_unblock(channel, handler)
            else:
                GObject.signal_handler_block(channel, handler)
