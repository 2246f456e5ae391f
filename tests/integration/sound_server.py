"""A sound server for the shell under test: PulseAudio with a speaker and a microphone.

spice-gtk plays and records through GStreamer's ``autoaudiosink``/``autoaudiosrc``,
which take PulseAudio's elements where a server answers (the image has no sound
server: there they take ALSA's).  The server runs as the shell's user with one
sink, ``speakers`` (PulseAudio's null sink: it plays to nothing, in real time,
and its monitor is what it played: what the test records) and one source, the
microphone: the monitor of another null sink, ``voice``, into which PulseAudio
plays a sine of a known frequency (``module-sine``; ``module-sine-source`` would
do, but delivers in 2 s blocks).  No shared memory (the test records as root), no cookie (the
socket is in a directory of the user's own).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time

from fixtures_virt import scaled
from shell_harness import as_user, user_dir

from testlib import need, stop_processes

RATE = 48000


class SoundServer:
    def __init__(self, uid: int, mic_hz: int) -> None:
        for tool in ("pulseaudio", "parec"):
            need(shutil.which(tool) is not None,
                 f"{tool} is not installed (pulseaudio, pulseaudio-utils)")
        self.dir = user_dir(uid, "vmclient-pulse-")
        self.socket = self.dir / "native"
        script = self.dir / "default.pa"
        script.write_text(
            f"load-module module-null-sink sink_name=speakers rate={RATE}\n"
            f"load-module module-null-sink sink_name=voice rate={RATE}\n"
            f"load-module module-sine sink=voice frequency={mic_hz}\n"
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={self.socket}\n"
            "set-default-sink speakers\nset-default-source voice.monitor\n")
        self.log_path = self.dir.with_suffix(".log")
        env = {"PATH": os.environ["PATH"], "HOME": str(self.dir),
               "XDG_RUNTIME_DIR": str(self.dir)}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*as_user(uid), "pulseaudio", "-n", f"--file={script}", "--daemonize=no",
                 "--exit-idle-time=-1", "--use-pid-file=no", "--disable-shm=yes",
                 "--realtime=no", "--high-priority=no", "--log-level=warning",
                 "--log-target=stderr"], env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + scaled(10)
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("pulseaudio did not start:\n" + self.log())
            time.sleep(0.05)
        self.address = f"unix:{self.socket}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def record(self, seconds: float) -> tuple[int, ...]:
        """What the speakers play during the next ``seconds`` (mono, 48 kHz)."""
        want = int(RATE * seconds) * 2
        proc = subprocess.Popen(
            ["parec", f"--server={self.address}", "--device=speakers.monitor", "--raw",
             "--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=20"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={"PATH": os.environ["PATH"]})
        assert proc.stdout is not None
        data = b""
        try:
            while len(data) < want:
                chunk = proc.stdout.read1(want - len(data))  # type: ignore[attr-defined]
                if not chunk:
                    break
                data += chunk
        finally:
            stop_processes([proc])
            assert proc.stderr is not None
            err = proc.stderr.read().decode(errors="replace")
        assert len(data) == want, f"parec recorded {len(data)} of {want} bytes: {err}"
        return struct.unpack(f"<{want // 2}h", data)

    def stop(self) -> None:
        stop_processes([self.proc])
        shutil.rmtree(self.dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)
