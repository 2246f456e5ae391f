"""The reader's receive buffer for puts: reused, unless a view of the last put survived."""

from __future__ import annotations

import socket

from vmclient.store.sftp_reader import _Inbox


def test_the_buffer_is_reused_unless_a_view_of_it_survived_the_put() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        inbox = _Inbox()
        ours.sendall(b"x" * 100)
        view = inbox.receive(theirs, 100)
        kept = view[10:20]  # something held on to the put's bytes
        del view
        inbox.done()
        ours.sendall(b"y" * 50)
        second = inbox.receive(theirs, 50)
        assert bytes(kept) == b"x" * 10, "not overwritten by the next put"
        assert bytes(second) == b"y" * 50
        buf = inbox.buf
        del second
        inbox.done()
        ours.sendall(b"z" * 30)
        third = inbox.receive(theirs, 30)
        assert inbox.buf is buf and bytes(third) == b"z" * 30, "no view left: reused"
        ours.sendall(b"w" * 200)
        del third
        inbox.done()
        assert bytes(inbox.receive(theirs, 200)) == b"w" * 200, "grown for a larger put"
