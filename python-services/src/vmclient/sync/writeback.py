"""Early writeback: make written data durable while more is still being written.

A restore writes gigabytes into the page cache and must fsync them before it
renames the disk into place; left to the end, that fsync is seconds of pure
waiting.  :class:`Writeback` runs ``fdatasync`` in a thread of its own each
time another ``step`` bytes were written, so the disk works while the network
does, and the final fsync finds little left.  An error of such an early
``fdatasync`` is kept and raised by :meth:`Writeback.close` (Linux reports a
writeback error to one fsync only, so it must not be lost).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

STEP = 128 << 20


class Writeback:
    def __init__(self, fds: Sequence[int], step: int = STEP) -> None:
        self.fds, self.step = tuple(fds), step
        self._lock = threading.Lock()
        self._pending = 0
        self._wake = threading.Event()
        self._closing = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="vmclient-writeback",
                                        daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        """Count ``n`` bytes written (thread-safe); wakes the flusher every ``step``."""
        with self._lock:
            self._pending += n
            if self._pending < self.step:
                return
            self._pending = 0
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                for fd in self.fds:
                    os.fdatasync(fd)
            except OSError as exc:
                self._error = self._error or exc

    def close(self, *, sync: bool) -> None:
        """Stop the flusher; with ``sync``, fsync every file and raise any writeback error."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        if not sync:
            return
        if self._error is not None:
            raise self._error
        for fd in self.fds:
            os.fsync(fd)
