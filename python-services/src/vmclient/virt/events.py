"""libvirt's event loop on asyncio, safe for libvirt calls made in worker threads.

libvirt's client watches its socket and its keepalive timer through the
process's event implementation, and calls that implementation from whichever
thread makes a libvirt call: every call made in one of :mod:`.hypervisor`'s
worker threads turns the socket's watch off and on again from that thread.
libvirt-python's ``libvirtaio`` then adds and removes the loop's readers from
the worker thread, which asyncio does not allow: ``add_reader`` cancels the
previous reader's handle, and when the loop thread is about to run that very
handle it runs a cancelled one (``Exception in callback None()``, a
``TypeError`` in the daemon's log; seen under load while the shell opened its
displays).

Here every change libvirt asks for is recorded under a lock in the calling
thread (so an id is returned at once, as libvirt expects) and applied to the
loop on the loop's own thread (``call_soon_threadsafe`` from any other).  The
callbacks run on the loop thread, and a removed watch's or timer's opaque data
is freed there later, never from inside libvirt's remove call.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

log = logging.getLogger(__name__)

READABLE = libvirt.VIR_EVENT_HANDLE_READABLE
WRITABLE = libvirt.VIR_EVENT_HANDLE_WRITABLE


@dataclass
class _Watch:
    fd: int
    events: int
    cb: Callable[..., Any]
    opaque: Any


@dataclass
class _Timer:
    timeout: int  # ms; -1: off; 0: every loop iteration
    cb: Callable[..., Any]
    opaque: Any
    handle: asyncio.TimerHandle | None = field(default=None)


class AsyncioEvents:
    """libvirt's event implementation (``virEventRegisterImpl``) on one asyncio loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._watches: dict[int, _Watch] = {}
        self._timers: dict[int, _Timer] = {}
        self._pending = 0  # watches and timers not yet freed
        self._watched: dict[int, int] = {}  # fd -> events the loop watches (loop thread)

    def register(self) -> AsyncioEvents:
        libvirt.virEventRegisterImpl(self.add_handle, self.update_handle, self.remove_handle,
                                     self.add_timeout, self.update_timeout,
                                     self.remove_timeout)
        return self

    def move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve ``loop`` from now on (the previous loop no longer runs)."""
        with self._lock:
            self.loop = loop
            self._watched = {}
            fds = {w.fd for w in self._watches.values()}
            timers = list(self._timers)
        for fd in fds:
            self._on_loop(self._sync_fd, fd)
        for timer in timers:
            self._on_loop(self._arm, timer)

    def is_idle(self) -> bool:
        """No watch or timer left, and every opaque freed."""
        with self._lock:
            return self._pending == 0

    # -- libvirt's side: any thread ---------------------------------------------------

    def add_handle(self, fd: int, events: int, cb: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            watch = next(self._ids)
            self._watches[watch] = _Watch(fd, events, cb, opaque)
            self._pending += 1
        self._on_loop(self._sync_fd, fd)
        return watch

    def update_handle(self, watch: int, events: int) -> None:
        with self._lock:
            w = self._watches.get(watch)
            if w is None:
                return
            w.events = events
        self._on_loop(self._sync_fd, w.fd)

    def remove_handle(self, watch: int) -> int:
        with self._lock:
            w = self._watches.pop(watch, None)
        if w is None:
            return -1
        self._on_loop(self._unwatch, w.fd)
        self._later(self._free, w.opaque)
        return 0

    def add_timeout(self, timeout: int, cb: Callable[..., Any], opaque: Any) -> int:
        with self._lock:
            timer = next(self._ids)
            self._timers[timer] = _Timer(timeout, cb, opaque)
            self._pending += 1
        self._on_loop(self._arm, timer)
        return timer

    def update_timeout(self, timer: int, timeout: int) -> None:
        with self._lock:
            t = self._timers.get(timer)
            if t is None:
                return
            t.timeout = timeout
        self._on_loop(self._arm, timer)

    def remove_timeout(self, timer: int) -> int:
        with self._lock:
            t = self._timers.pop(timer, None)
        if t is None:
            return -1
        self._on_loop(self._disarm, t)
        self._later(self._free, t.opaque)
        return 0

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)`` on the loop thread: now if this is it, else as soon as it can."""
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here:
            fn(*args)
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to watch
            self.loop.call_soon_threadsafe(fn, *args)

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        """``fn(*args)`` on the loop thread, never before the caller returns (freeing an
        opaque inside libvirt's remove call would deadlock)."""
        with contextlib.suppress(RuntimeError):  # closed: libvirt frees nothing more
            self.loop.call_soon_threadsafe(fn, *args)

    # -- the loop's side: its thread only ----------------------------------------------

    def _sync_fd(self, fd: int) -> None:
        with self._lock:
            want = 0
            for w in self._watches.values():
                if w.fd == fd:
                    want |= w.events
        had = self._watched.get(fd, 0)
        if (want ^ had) & READABLE:
            if want & READABLE:
                self.loop.add_reader(fd, self._dispatch, fd, READABLE)
            else:
                self.loop.remove_reader(fd)
        if (want ^ had) & WRITABLE:
            if want & WRITABLE:
                self.loop.add_writer(fd, self._dispatch, fd, WRITABLE)
            else:
                self.loop.remove_writer(fd)
        if want & (READABLE | WRITABLE):
            self._watched[fd] = want & (READABLE | WRITABLE)
        else:
            self._watched.pop(fd, None)

    def _unwatch(self, fd: int) -> None:
        """After a removal: the loop forgets ``fd`` whatever it watched, and watches it again
        for the watches left.  libvirt may have closed it meanwhile and opened another
        socket with the same number, which the kernel's epoll set does not hold yet."""
        self.loop.remove_reader(fd)
        self.loop.remove_writer(fd)
        self._watched.pop(fd, None)
        self._sync_fd(fd)

    def _dispatch(self, fd: int, event: int) -> None:
        with self._lock:
            due = [(watch, w) for watch, w in self._watches.items()
                   if w.fd == fd and w.events & event]
        for watch, w in due:
            w.cb(watch, fd, event, w.opaque)

    def _arm(self, timer: int) -> None:
        with self._lock:
            t = self._timers.get(timer)
        if t is None:
            return
        self._disarm(t)
        if t.timeout >= 0:
            t.handle = self.loop.call_later(t.timeout / 1000, self._fire, timer)

    @staticmethod
    def _disarm(t: _Timer) -> None:
        if t.handle is not None:
            t.handle.cancel()
            t.handle = None

    def _fire(self, timer: int) -> None:
        with self._lock:
            t = self._timers.get(timer)
        if t is None:
            return
        t.handle = None
        t.cb(timer, t.opaque)
        if t.handle is None:  # the callback did not change it: again, if still on
            self._arm(timer)

    def _free(self, opaque: Any) -> None:
        try:
            libvirt.virEventInvokeFreeCallback(opaque)
        finally:
            with self._lock:
                self._pending -= 1


_current: AsyncioEvents | None = None


def current() -> AsyncioEvents | None:
    """The implementation registered in this process (None: none yet)."""
    return _current


def serve(loop: asyncio.AbstractEventLoop) -> AsyncioEvents:
    """libvirt's events on ``loop``: registered once per process, then moved to a new loop
    (libvirt takes one implementation per process)."""
    global _current  # noqa: PLW0603
    if _current is None:
        _current = AsyncioEvents(loop).register()
    elif _current.loop is not loop:
        _current.move_to(loop)
    return _current
