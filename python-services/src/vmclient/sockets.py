"""Receiving a known number of bytes from a stream socket."""

from __future__ import annotations

import socket


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes: one ``recv`` into one new object (no buffer to zero first,
    no copy), unless a signal splits it; :class:`EOFError` if the other end closes."""
    data = sock.recv(n, socket.MSG_WAITALL)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        if not parts[-1]:
            raise EOFError("the other end closed the socket")
        parts.append(sock.recv(n - got, socket.MSG_WAITALL))
        got += len(parts[-1])
    return b"".join(parts)
