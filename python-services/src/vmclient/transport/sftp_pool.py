"""The connections under an SFTP store: one per worker thread, retried, errors translated.

Calls block, so each runs in a thread pool of ``connections`` workers, each worker
keeping its own :class:`~.sftp_client.Connection` (its own ``ssh`` process, with
its own core for the crypto): ``connections`` requests at once, the others opened
as soon as the first one is up.  A dropped connection is opened again (bounded
attempts with back-off) and the request run again on it; what the server
*answers* (no such file, permission denied) and what ssh refuses (host key,
authentication) is not retried, but translated into the repository's errors,
naming the host, the path and the operation.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..store.errors import ObjectNotFound
from . import sftp_codec as c
from .sftp_client import Connection, ConnectionLost, Refused
from .target import ADVICE, RemoteRefused, RemoteUnavailable, SFTPTarget

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConnectionPool:
    """Runs a request with a connection to ``target`` in a worker thread: the part of
    :class:`~.sftp.SFTPStore` that knows nothing of the repository's objects."""

    def __init__(self, target: SFTPTarget) -> None:
        self.target = target
        self._local = threading.local()
        self._conns: builtins.list[Connection] = []
        self._lock = threading.Lock()
        self._warming = False  # the first connection has set the others opening
        self._executor = ThreadPoolExecutor(max_workers=max(1, target.connections),
                                            thread_name_prefix="vmclient-sftp")
        self.reconnects = 0  # how often a dropped connection was re-opened

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        self.shutdown()

    def shutdown(self) -> None:
        """Close every connection (no request may be running)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()

    def pids(self) -> builtins.list[int]:
        """The ssh processes of the open connections."""
        with self._lock:
            return [conn.pid for conn in self._conns]

    async def _run(self, op: str, path: str, fn: Callable[[Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, op, path, fn)

    def _warm(self) -> None:
        """This worker's connection, ahead of its first request (a failure is left to it)."""
        try:
            self._connection()
        except Exception as exc:
            log.debug("SFTP %s: connecting ahead failed: %s", self.target.server, exc)

    def _call(self, op: str, path: str, fn: Callable[[Connection], T]) -> T:
        t = self.target
        problem: BaseException | None = None
        for attempt in range(t.attempts):
            if attempt:
                time.sleep(t.backoff * 2 ** (attempt - 1))
            try:
                conn = self._connection()
            except Refused as exc:
                advice = ADVICE[exc.failure].format(kh=t.known_hosts, key=t.credentials)
                raise RemoteRefused(t.server, op, path, f"{advice} (ssh: {exc})") from exc
            except c.MalformedAnswer as exc:
                raise RemoteUnavailable(op, path, t.server, attempt + 1, exc) from exc
            except (ConnectionLost, OSError) as exc:
                log.info("SFTP %s: connecting failed (attempt %d/%d): %s", t.server,
                         attempt + 1, t.attempts, exc)
                problem = exc
                continue
            try:
                return fn(conn)
            except c.MalformedAnswer as exc:  # the server is broken (or hostile)
                self._drop(conn)
                raise RemoteUnavailable(op, path, t.server, attempt + 1, exc) from exc
            except ConnectionLost as exc:
                log.info("SFTP %s: connection lost during %s of %s (attempt %d/%d): %s",
                         t.server, op, path, attempt + 1, t.attempts, exc)
                self._drop(conn)
                self.reconnects += 1
                problem = exc
            except FileNotFoundError as exc:
                raise ObjectNotFound(path) from exc
            except PermissionError as exc:
                raise RemoteRefused(t.server, op, path, "permission denied") from exc
            except OSError as exc:
                raise RemoteRefused(t.server, op, path, exc.strerror or str(exc)) from exc
        assert problem is not None
        raise RemoteUnavailable(op, path, t.server, t.attempts,
                                f"{problem} (is the server up and reachable on port "
                                f"{t.port}?)") from problem

    def _connection(self) -> Connection:
        # asked per request: a device's own account (target.account) changes when it is
        # enrolled again, and a connection logged in as the old one is not reused
        endpoint = self.target.endpoint
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.alive() and conn.endpoint == endpoint:
            return conn
        if conn is not None:
            self._drop(conn)
            self.reconnects += 1
        conn = Connection(endpoint)
        self._local.conn = conn
        with self._lock:
            self._conns.append(conn)
            warm, self._warming = not self._warming, True
        if warm:  # the first connection is up: the other workers open theirs beside it
            with contextlib.suppress(RuntimeError):  # (the store is being closed)
                for _ in range(self.target.connections - 1):
                    self._executor.submit(self._warm)
        return conn

    def _drop(self, conn: Connection) -> None:
        conn.close()
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            if conn in self._conns:
                self._conns.remove(conn)
