"""The channel buffer under paramiko's SFTP client: pieces in, the same bytes out."""

from __future__ import annotations

import os
import threading

from vmclient.store.sftp_wire import Pipe, Received


def test_reads_of_any_size_give_the_bytes_in_order_across_pieces() -> None:
    pipe = Pipe()
    pieces = [os.urandom(n) for n in (5, 32768, 1, 70000, 13)]
    for p in pieces:
        pipe.feed(p)
    whole = b"".join(pieces)
    assert len(pipe) == len(whole) and pipe.read_ready()
    out = []
    for n in (4, 1, 40000, 3, 7, 1 << 20):
        out.append(pipe.read(n))
        assert len(out[-1]) == min(n, len(whole) - sum(map(len, out[:-1])))
    assert b"".join(out) == whole
    assert len(pipe) == 0 and not pipe.read_ready()


def test_a_read_of_a_whole_piece_takes_it_without_a_copy() -> None:
    pipe = Pipe()
    piece = os.urandom(32768)
    pipe.feed(piece)
    pipe.feed(b"next")
    assert pipe.read(32768) is piece
    assert pipe.read(10) == b"next"


def test_a_reader_waits_for_data_and_sees_the_close() -> None:
    pipe = Pipe()
    threading.Timer(0.05, pipe.feed, (b"late",)).start()
    assert pipe.read(100) == b"late"
    pipe.close()
    assert pipe.read(100) == b""


def test_received_joins_once() -> None:
    buf = Received()
    buf.begin(6)
    for part in (b"ab", b"cd", b"ef"):
        buf.extend(part)
    assert buf.size == 6 and buf.join() == b"abcdef" and buf.join() == b"abcdef"
