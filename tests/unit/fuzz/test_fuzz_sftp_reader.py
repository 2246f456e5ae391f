"""Fuzzing the parent's side of the reader-process protocol (``store.sftp_reader``).

A reader answers each request with ``length | data | trailer length | pickled
trailer``.  The reader is a process of our own, but it parses what the SFTP
server sends, so the parent must not trust its answer blindly: a garbled or
truncated answer is :class:`ReaderGone` (the store starts another reader),
an answer that names anything but an exception class is not unpickled, and
an error answer raises that error.
"""

from __future__ import annotations

import pickle
import socket
import struct
import threading

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.errors import VMClientError
from vmclient.store.errors import ObjectNotFound
from vmclient.store.sftp_reader import ReaderGone, _answer, _pickled_error

from .mutate import mutated_bytes

DATA = b"chunk" * 40


def frame(data: bytes, trailer: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data + struct.pack(">I", len(trailer)) + trailer


GOOD = frame(DATA, pickle.dumps(("data", len(DATA), 1, 2, 3)))
SHORT = frame(DATA + bytes(10), pickle.dumps(("data", len(DATA), 0, 0, 0)))  # padded
ERROR = frame(b"", _pickled_error(ObjectNotFound("images/x")))


def receive(answer: bytes) -> object:
    """``_answer`` of a reader that sent ``answer`` and closed."""
    ours, theirs = socket.socketpair()
    t = threading.Thread(target=lambda: (theirs.sendall(answer), theirs.close()))
    t.start()
    try:
        return _answer(ours, "dev@repo:22")
    except VMClientError as exc:
        return exc
    finally:
        t.join()
        ours.close()


def test_the_good_answers() -> None:
    assert receive(GOOD) == (DATA, 1, 2, 3)
    assert receive(SHORT) == (DATA, 0, 0, 0)
    err = receive(ERROR)
    assert isinstance(err, ObjectNotFound) and err.path == "images/x"


@given(st.sampled_from([GOOD, SHORT, ERROR]).flatmap(mutated_bytes))
@example(frame(b"", b"\x80\x04garbage"))  # UnpicklingError was ReaderGone, but not:
@example(frame(b"", pickle.dumps(("data", 0))))  # ValueError: too few values to unpack
@example(frame(b"", pickle.dumps(("error", "not an exception", 0, 0, 0))))  # TypeError
@example(frame(b"", pickle.dumps(("data", "x", 0, 0, 0))))  # TypeError slicing
@example(frame(b"", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00\x8c\x01x\x94."[:9]))
def test_mutated_answers(answer: bytes) -> None:
    result = receive(answer)
    assert isinstance(result, VMClientError) or (
        isinstance(result, tuple) and isinstance(result[0], bytes) and len(result[0]) <=
        len(DATA) + 10)


class Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("a reader's answer ran code in the parent",))


def test_an_answer_naming_a_function_is_not_unpickled(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    err = receive(frame(b"", pickle.dumps(("error", Boom(), 0, 0, 0))))
    assert isinstance(err, ReaderGone) and "garbled" in str(err)
    assert "ran code" not in capsys.readouterr().out
