"""Fuzzing the NBD client (``sync.nbd.Client``): the handshake and read replies a server sends.

The server is QEMU (the backup job's export or ``qemu-nbd``), but what it sends is
still parsed: a mutated conversation must end in data or an :class:`NBDError`,
never another exception.  The fake server is a socket pair: it sends its whole
(mutated) side of a valid conversation, then either reads until the client is
done or closes at once (a server that died).
"""

from __future__ import annotations

import socket
import struct
import threading

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.sync import nbd

from .mutate import mutated_bytes, outcome

SIZE = 1 << 20
LENGTHS = [4096, 8192, 100]


def conversation(lengths: list[int]) -> bytes:
    """The server's side of a good handshake (export info, then ACK) and one read."""
    out = b"NBDMAGIC" + b"IHAVEOPT" + struct.pack(">H", 3)
    info = struct.pack(">HQH", 0, SIZE, 1)  # NBD_INFO_EXPORT: size, transmission flags
    out += struct.pack(">QIII", 0x3E889045565A9, 7, 3, len(info)) + info
    out += struct.pack(">QIII", 0x3E889045565A9, 7, 1, 0)
    out += struct.pack(">IIQ", 0x67446698, 0, 1) + bytes(range(256)) * (sum(lengths) // 256)
    return out + bytes(sum(lengths) % 256)


GOOD = conversation(LENGTHS)


def talk(server_bytes: bytes, lengths: list[int], *, linger: bool = True) -> object:
    """The client against a server that sends ``server_bytes``, then reads what the client
    sends until it is done (``linger``) or has closed already (a dead server)."""
    ours, theirs = socket.socketpair()
    ours.settimeout(10)

    def server() -> None:
        try:
            theirs.sendall(server_bytes)
            theirs.shutdown(socket.SHUT_WR)
            while linger and theirs.recv(1 << 16):
                pass
        except OSError:
            pass  # the client closed first
        finally:
            theirs.close()

    t = threading.Thread(target=server)
    if linger:
        t.start()
    else:
        server()  # (what it sends fits in the socket's buffer)
    try:
        def client() -> list[bytes]:
            c = nbd.Client(ours, "vda")
            assert c.size == SIZE or server_bytes != GOOD
            return c.read_run(lengths, 0)
        return outcome(client)
    finally:
        ours.close()
        if linger:
            t.join()


def test_the_good_conversation_reads() -> None:
    data = talk(GOOD, LENGTHS)
    assert isinstance(data, list) and [len(d) for d in data] == LENGTHS


@given(mutated_bytes(GOOD, max_mutations=3), st.booleans())
@example(GOOD[:30], False)  # the server closes during the handshake: BrokenPipeError
def test_mutated_conversation(server_bytes: bytes, linger: bool) -> None:
    talk(server_bytes, LENGTHS, linger=linger)


@given(st.binary(max_size=120), st.booleans())
def test_random_server(server_bytes: bytes, linger: bool) -> None:
    talk(server_bytes, LENGTHS, linger=linger)
