"""SFTP reads and writes in processes of their own: one SSH connection per reader process.

paramiko decrypts and parses the SSH stream in Python, holding the GIL, and
so does much of opening a chunk; in one process a download therefore runs on
little more than one core however many connections it has.  A *reader* is a
child process that owns one SFTP connection and serves the ``get``, ``list``
and ``put`` requests of one thread of :class:`~vmclient.store.sftp.SFTPStore`,
so the transport work runs beside the parent's, on another core.

Readers are forked by a *zygote*: one small single-threaded process per
parent, started at the first reader with the parent's interpreter and
``sys.path`` (so it runs the parent's code), which imports paramiko and this
package once.  A reader is then a plain ``fork`` of it: it starts in
milliseconds and inherits none of the parent's threads or state.
(multiprocessing's forkserver would re-import the parent's ``__main__`` in
every child, and in Python 3.11 it ignores ``sys.path``.)

The parent sends the zygote the target and one end of a socket pair (over a
``SOCK_SEQPACKET`` pair, the descriptor as ``SCM_RIGHTS``).  The reader runs the
same retrying read as the in-process path (a dropped connection is re-opened
and the read continues at the offset it reached) and answers each request
with a small pickled header (the object's length and the reconnect counters,
or the error raised), then the bytes, which the parent receives straight into
the object it returns.  A request is ``(op, args, payload length)`` pickled;
a put's bytes (the payload, ``-1`` if none) follow it as they are, not
pickled, and the reader receives them into a buffer it reuses from put to put
(a 16 MiB pack no longer costs a fresh mapping to fault in, nor two copies
through pickle); the put gets a view of it, and a buffer still viewed after
the put is never overwritten (see :class:`_Inbox`).  A reader ends when the
parent closes its end; the zygote when the parent's end of its pair closes
(the parent exited).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..sockets import recv_exactly
from .errors import StoreError
from .sftp_wire import Received

if TYPE_CHECKING:
    from .sftp import SFTPTarget

_LEN = struct.Struct(">I")
# glibc: keep freed memory for the next answer rather than return it to the system (and
# fault it in again): a reader allocates and frees a few MiB per request all the time
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20),
              "MALLOC_TOP_PAD_": str(16 << 20)}
_BOOT = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from vmclient.store.sftp_reader import zygote; zygote(int(sys.argv[2]))")


class ReaderGone(StoreError):
    """The SFTP read process for {} ended: {}"""


class _Zygote:
    """The parent's handle on its zygote, started when the first reader is needed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def fork(self, target: SFTPTarget, theirs: socket.socket) -> int:
        """Fork a reader for ``target`` serving the socket ``theirs``; its process id."""
        with self.lock:
            for attempt in range(2):  # a zygote that died is started again, once
                if self.sock is None or self.proc is None or self.proc.poll() is not None:
                    self._start()
                assert self.sock is not None
                try:
                    socket.send_fds(self.sock, [pickle.dumps(target)], [theirs.fileno()])
                    pid = self.sock.recv(_LEN.size)
                    if pid:
                        return int(_LEN.unpack(pid)[0])
                except OSError:
                    if attempt:
                        raise
                self._stop()
            raise EOFError("the SFTP reader zygote ended")

    def _start(self) -> None:
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps(sys.path), str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                env={**os.environ, **MALLOC_ENV})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            self.proc.wait()
            self.proc = None


_ZYGOTE = _Zygote()


class Reader:
    """The parent's end of one reader process (used by one thread at a time)."""

    def __init__(self, target: SFTPTarget) -> None:
        self.server = target.server
        self.sock, theirs = socket.socketpair()
        try:
            self.pid = _ZYGOTE.fork(target, theirs)
        except (OSError, EOFError) as exc:
            self.sock.close()
            raise ReaderGone(self.server, f"could not start one: {exc}") from exc
        except BaseException:
            self.sock.close()
            raise
        finally:
            theirs.close()

    def call(self, op: str, *args: Any, payload: bytes | None = None
             ) -> tuple[bytes, int, int, int]:
        """(data, reconnects, resumed bytes of reads, of writes) of ``op`` run in the
        reader, or its error.  A ``payload`` is sent after the pickled request as it is
        (the reader passes it as the last argument)."""
        try:
            _send(self.sock, pickle.dumps((op, args, -1 if payload is None else len(payload))))
            if payload is not None:
                self.sock.sendall(payload)
            return _answer(self.sock, self.server)
        except OSError as exc:
            self.close()
            raise ReaderGone(self.server, f"{type(exc).__name__}: {exc}") from exc
        except ReaderGone:
            self.close()
            raise

    @property
    def alive(self) -> bool:
        return self.sock.fileno() >= 0

    def close(self) -> None:
        self.sock.close()  # the reader sees the end of its requests and exits


def zygote(control_fd: int) -> None:
    """The zygote's loop: fork a reader for every (target, socket) the parent sends."""
    from .sftp import SFTPStore  # noqa: F401  (imported once, inherited by every reader)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the parent's to handle
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # readers are reaped by the kernel
    control = socket.socket(fileno=control_fd)
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(control, 1 << 16, 1)
        if not msg:
            return  # the parent closed its end or exited
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            control.close()
            try:
                serve(pickle.loads(msg), socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        for fd in fds:
            os.close(fd)
        control.sendall(_LEN.pack(pid))


def serve(target: SFTPTarget, sock: socket.socket) -> None:
    """A reader: answer requests until the parent closes the socket."""
    from .sftp import SFTPStore
    store = SFTPStore(target)
    inbox = _Inbox()
    try:
        while True:
            op, args, size = pickle.loads(recv_exactly(sock, _recv_len(sock)))
            if size >= 0:
                args = (*args, inbox.receive(sock, size))
            before = store.reconnects, store.resumed_bytes, store.resumed_upload_bytes
            stream = _Stream(sock)
            try:
                data = store.serve_read(op, *args, into=stream)
                if stream.length is None:  # not streamed (a listing): send it now
                    stream.begin(len(data))
                    stream.extend(data)
                trailer = pickle.dumps(("data", stream.size, store.reconnects - before[0],
                                        store.resumed_bytes - before[1],
                                        store.resumed_upload_bytes - before[2]))
            except Exception as exc:  # handed to the parent, which raises it
                trailer = _pickled_error(exc)
            finally:
                args = ()
                inbox.done()
            stream.finish(trailer)
    except (OSError, EOFError):
        return  # the parent closed its end (or died)
    finally:
        store.shutdown()
        sock.close()


class _Inbox:
    """The buffer a reader receives puts' bytes into, reused from put to put (no fresh
    pages to fault in for every pack).

    A put gets a view of it.  Before the next put overwrites it, :meth:`done` checks
    that no view of it survived the last one (a bytearray with views cannot be
    resized): if one did, that buffer is left to whoever holds it and a new one is
    made.
    """

    def __init__(self) -> None:
        self.buf = bytearray()

    def receive(self, sock: socket.socket, size: int) -> memoryview:
        if len(self.buf) < size:
            self.buf = bytearray(size)
        view = memoryview(self.buf)[:size]
        got = 0
        while got < size:
            n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if not n:
                raise EOFError("the other end closed the socket")
            got += n
        return view

    def done(self) -> None:
        if self.buf:
            try:
                self.buf.append(self.buf.pop())  # resizes: fails while a view exists
            except BufferError:
                self.buf = bytearray()


class _Stream(Received):
    """A reader's answer: the length, the bytes as they arrive, then a trailer.

    The parent receives the announced length in one piece; if fewer bytes came
    (the object shrank, or the read failed) the rest is padding and the trailer
    says how many are real.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.length: int | None = None

    def begin(self, length: int) -> None:
        if self.length is None:
            self.length = length
            self.sock.sendall(_LEN.pack(length))

    def extend(self, data: bytes | memoryview) -> None:
        assert self.length is not None
        data = data[:self.length - self.size]
        self.sock.sendall(data)
        self.size += len(data)

    def join(self) -> bytes:
        return b""

    def finish(self, trailer: bytes) -> None:
        if self.length is None:
            self.begin(0)
        assert self.length is not None
        for _ in range(self.size, self.length, 1 << 20):
            self.extend(bytes(min(1 << 20, self.length - self.size)))
        _send(self.sock, trailer)


class _Unpickler(pickle.Unpickler):
    """Unpickles a reader's answer: plain values and exception classes already imported.

    The reader parses what the SFTP server sends: an answer naming a function or
    a module to import is refused, so a reader gone wrong cannot run code here.
    """

    def find_class(self, module: str, name: str) -> Any:
        found = getattr(sys.modules.get(module), name, None)  # no imports
        if isinstance(found, type) and issubclass(found, Exception):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not an exception class")


def _loads(untrusted: bytes) -> Any:
    return _Unpickler(io.BytesIO(untrusted)).load()


def _answer(sock: socket.socket, server: str) -> tuple[bytes, int, int, int]:
    """One answer of a reader: (data, reconnects, resumed bytes of reads, of writes), or
    the error it carries raised; :class:`ReaderGone` if the connection ended or the answer
    is not one :func:`serve` writes."""
    try:
        length = _recv_len(sock)
        data = recv_exactly(sock, length)
        untrusted = recv_exactly(sock, _recv_len(sock))
    except (OSError, EOFError) as exc:
        raise ReaderGone(server, f"{type(exc).__name__}: {exc}") from exc
    try:
        kind, value, *counters = _loads(untrusted)
    except Exception as exc:  # whatever unpickling garbage raises
        raise ReaderGone(server, f"garbled answer: {type(exc).__name__}: {exc}") from None
    if kind == "error" and isinstance(value, Exception):
        raise value
    if kind != "data" or len(counters) != 3 or not all(
            type(v) is int and v >= 0 for v in (value, *counters)) or value > length:
        raise ReaderGone(server, f"garbled answer: {kind!r} {type(value).__name__}")
    reconnects, resumed, resumed_up = counters
    return (data if value == length else data[:value]), reconnects, resumed, resumed_up


def _pickled_error(exc: Exception) -> bytes:
    try:
        header = pickle.dumps(("error", exc, 0, 0, 0))
        _loads(header)  # as the parent will
        return header
    except Exception:  # an exception that does not survive pickling: keep its text
        return pickle.dumps(("error", StoreError(f"{type(exc).__name__}: {exc}"), 0, 0, 0))


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)) + payload)


def _recv_len(sock: socket.socket) -> int:
    return int(_LEN.unpack(recv_exactly(sock, _LEN.size))[0])
