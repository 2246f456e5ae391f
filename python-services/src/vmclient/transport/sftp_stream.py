"""The byte stream under the SFTP client: this side of the socket pair to ``ssh``.

Blocking with a timeout the kernel keeps (``SO_RCVTIMEO``/``SO_SNDTIMEO``): the
kernel, not a poll loop in Python, waits for ssh to take or give bytes.

Receiving allocates nothing per call: what arrives goes into one buffer kept
for the connection's life (:data:`RECEIVE_BUFFER`).  Each receive takes
whatever has arrived, up to the buffer's free space: when this thread is late
(the threads opening chunks hold the GIL), one receive brings many answers, so
it needs the GIL, and ssh needs waking, less often.  Headers and small answers
are copied out of it; the payload of a DATA answer is handed over in pieces
(:meth:`Stream.pieces`): what the buffer holds of it, copied out, then the rest
received straight into new ``bytes`` objects (``recv``: not zero-filled, not
copied again), so a ranged get joins its pieces once.
A payload whose place is known (a ranged read into one buffer: :meth:`Stream.read_into`)
is received straight there instead, its header read without reading ahead: no copy
in Python at all.
Sending: ``sendall``, or ``sendmsg`` of headers and views of the caller's
buffer (no copy in Python).
"""

from __future__ import annotations

import socket
import struct

RECEIVE_BUFFER = 1 << 20  # the most one receive into the buffer takes
MAX_PIECE = 1 << 20  # the most one receive of a payload takes


class ConnectionLost(Exception):
    """The SSH session ended or stopped answering (not an answer of the server)."""


class Stream:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        _blocking_with_timeout(sock, timeout)
        self._buf = memoryview(bytearray(RECEIVE_BUFFER))
        self._start = self._end = 0  # received, not yet taken: _buf[_start:_end]

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ConnectionLost(f"sending: {exc}") from exc

    def sendv(self, parts: list[bytes | memoryview]) -> None:
        """Send ``parts`` whole with as few ``sendmsg`` calls as the kernel allows."""
        try:
            while parts:
                sent = self.sock.sendmsg(parts)
                while parts and sent >= len(parts[0]):
                    sent -= len(parts[0])
                    parts.pop(0)
                if parts and sent:
                    parts[0] = memoryview(parts[0])[sent:]
        except OSError as exc:
            raise ConnectionLost(f"sending: {exc}") from exc

    def read(self, n: int, *, ahead: bool = True) -> bytes:
        """Exactly ``n`` bytes.  ``ahead=False``: nothing past them is received (the
        header of a payload that :meth:`read_into` then receives where it belongs)."""
        if n > len(self._buf):  # a long answer (a directory listing): rare
            return b"".join(self.pieces(n))
        self._fill(n, ahead=ahead)
        start = self._start
        self._start += n
        return bytes(self._buf[start:self._start])

    def read_into(self, view: memoryview) -> None:
        """Exactly ``len(view)`` bytes into ``view``: what the buffer holds first, the rest
        received straight into it (``MSG_WAITALL``: the kernel waits for all of it, so
        one call, and no copy in Python, per payload)."""
        n = len(view)
        pos = min(n, self._end - self._start)
        if pos:
            view[:pos] = self._buf[self._start:self._start + pos]
            self._start += pos
        while pos < n:
            try:
                got = self.sock.recv_into(view[pos:], n - pos, socket.MSG_WAITALL)
            except OSError as exc:  # the timeout (EAGAIN), a reset, a closed socket
                raise ConnectionLost(f"receiving: {exc}") from exc
            if not got:
                raise ConnectionLost("the SSH session ended")
            pos += got

    def pieces(self, n: int) -> list[bytes]:
        """Exactly ``n`` bytes, in the pieces they arrived in (the buffered ones first)."""
        out = []
        have = min(n, self._end - self._start)
        if have:
            out.append(bytes(self._buf[self._start:self._start + have]))
            self._start += have
            n -= have
        while n:
            try:
                piece = self.sock.recv(min(n, MAX_PIECE))
            except OSError as exc:  # the timeout (EAGAIN), a reset, a closed socket
                raise ConnectionLost(f"receiving: {exc}") from exc
            if not piece:
                raise ConnectionLost("the SSH session ended")
            out.append(piece)
            n -= len(piece)
        return out

    def skip(self, n: int) -> None:
        """Receive ``n`` bytes and drop them."""
        while n:
            have = self._end - self._start
            if not have:
                self._fill(min(n, len(self._buf)))
                continue
            taken = min(n, have)
            self._start += taken
            n -= taken

    def _fill(self, n: int, *, ahead: bool = True) -> None:
        """At least ``n`` bytes (no more than the buffer holds) received, not yet taken;
        with ``ahead``, whatever else has arrived too (up to the buffer's free space)."""
        if self._end - self._start >= n:
            return
        if self._start:  # what is left to the front, the rest of the buffer free
            have = self._end - self._start
            self._buf[:have] = self._buf[self._start:self._end]
            self._start, self._end = 0, have
        while self._end < n:
            try:
                got = (self.sock.recv_into(self._buf[self._end:]) if ahead else
                       self.sock.recv_into(self._buf[self._end:n], n - self._end,
                                           socket.MSG_WAITALL))
            except OSError as exc:
                raise ConnectionLost(f"receiving: {exc}") from exc
            if not got:
                raise ConnectionLost("the SSH session ended")
            self._end += got


def _blocking_with_timeout(sock: socket.socket, timeout: float) -> None:
    """A blocking socket whose waits end after ``timeout`` seconds: the kernel, not a poll
    loop in Python, waits for ssh to take or give bytes (Python's own socket timeout makes
    every partial send and receive a round through the interpreter)."""
    sock.settimeout(None)
    seconds = int(timeout)
    tv = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
