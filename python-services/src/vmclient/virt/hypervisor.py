"""Connections to libvirtd, used from asyncio: :class:`Hypervisor`.

- libvirt's event loop implementation (:mod:`.events`) is registered on the
  running asyncio loop before the first connection.
- Every blocking call runs in a worker thread, never on the loop.  Each
  connection has its own pool of :data:`MAX_CALLS_PER_CONNECTION` threads, which
  is libvirtd's default ``max_client_requests``; more parallelism means more
  connections.
- A lost connection (libvirtd restarted) is noticed by the close callback or by
  a failing call; the adapter reconnects with back-off and tells its owner
  (``on_reconnect``) so it can reconcile what it believes with what is.
- Domain events (lifecycle, metadata changes) are watched on the first
  connection only (each event once), for an owner that keeps its own view of
  the domains (:meth:`Hypervisor.watch_domains`); the owner resyncs that view
  after every (re)connection, :attr:`Hypervisor.generation` tells which.
- A domain's handle is looked up once per connection and kept (libvirtd finds
  the domain by UUID on every call): an operation on a domain is one call.
- :meth:`Hypervisor.call` and :meth:`Hypervisor.on_domain` run a function of
  the other modules of this package in a worker thread; ``libvirt.libvirtError``
  never leaves them: it becomes a :class:`~vmclient.errors.HypervisorError` (or a
  subclass) with a message a user can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import libvirt

from ..errors import (
    HypervisorError,
    HypervisorUnavailable,
    VMNotFound,
    VMOperationFailed,
    VMOperationTimeout,
)
from ..tasks import at_most
from . import domains, events
from .domains import DomainInfo
from .resources import Resources

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CALLS_PER_CONNECTION = 5

# Errors reach us as exceptions; libvirt's default handler would also print them.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def _ensure_event_impl() -> None:
    """Serve libvirt's events on the running loop (:mod:`.events`).

    libvirt takes one implementation per process.  A process that runs one
    loop after another (the CLI, tests) moves it to the new loop once the old
    one no longer runs; two loops running at once cannot share it.
    """
    loop = asyncio.get_running_loop()
    impl = events.current()
    if impl is not None and impl.loop is not loop and impl.loop.is_running():
        raise RuntimeError("libvirt's event implementation is bound to another running "
                           "event loop")
    events.serve(loop)


def _after(first: Future[None], fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` once ``first`` is done (in the worker thread), or ``first``'s exception."""
    def call(*args: Any) -> T:
        first.result()
        return fn(*args)
    return call


def _connection_lost(exc: libvirt.libvirtError) -> bool:
    code = exc.get_error_code()
    domain = exc.get_error_domain()
    # A system error is a lost connection only when the RPC layer reports it: QEMU
    # failing to open a disk ("Permission denied") is a system error too.
    return code in (libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_NO_CONNECT,
                    libvirt.VIR_ERR_INVALID_CONN) or (
        code in (libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_SYSTEM_ERROR)
        and domain in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE))


class _Connection:
    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: libvirt.virConnect | None = None
        self.pool = ThreadPoolExecutor(MAX_CALLS_PER_CONNECTION,
                                       thread_name_prefix=f"libvirt{index}")
        self.callback_ids: list[int] = []
        self.doms: dict[str, Any] = {}  # UUID -> virDomain of this connection

    def dom(self, conn: libvirt.virConnect, uuid: str) -> Any:
        """The handle of domain ``uuid`` (in a worker thread: a miss is one call)."""
        d = self.doms.get(uuid)
        if d is None:
            d = self.doms[uuid] = conn.lookupByUUIDString(uuid)
        return d


class Hypervisor(Resources):
    """A small set of connections to one libvirtd, used from asyncio (definitions, secrets
    and networks: :class:`~vmclient.virt.resources.Resources`)."""

    def __init__(
        self,
        uri: str = "qemu:///system",
        connections: int = 1,
        *,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
        on_lifecycle: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        self.uri = uri
        self._conns = [_Connection(i) for i in range(max(1, connections))]
        self._rr = itertools.cycle(self._conns)
        self._on_reconnect = on_reconnect
        self._on_lifecycle = on_lifecycle
        self._on_metadata: Callable[[str, str, str], None] | None = None
        self.generation = 0  # bumps on every (re)connection: domain events may have been lost
        self._connected = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- connection management -------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self, *, retry: bool = False) -> None:
        """Open every connection; with ``retry`` wait (with back-off) until libvirtd answers."""
        _ensure_event_impl()
        self._loop = asyncio.get_running_loop()
        delay = 0.2
        while True:
            try:
                for c in self._conns:
                    await self._open(c)
            except HypervisorUnavailable as exc:
                if not retry or self._closing:
                    raise
                log.warning("%s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.generation += 1
            self._connected.set()
            return

    async def _open(self, c: _Connection) -> None:
        if c.conn is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(c.pool, libvirt.open, self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(self.uri, exc.get_error_message()) from exc
        conn.registerCloseCallback(self._closed_cb, c)
        if c.index == 0:  # each event once
            if self._on_lifecycle is not None:
                c.callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_cb, None))
            if self._on_metadata is not None:
                c.callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._metadata_cb, None))
        c.conn = conn
        log.debug("connection %d to %s open", c.index, self.uri)

    def _closed_cb(self, _conn: Any, reason: int, c: _Connection) -> None:
        log.warning("connection %d to libvirtd lost (reason %d)", c.index, reason)
        # Not from inside libvirt's own callback (closing there would deadlock),
        # and it may come from a worker thread whose call saw the EOF.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._lost)

    def watch_domains(self, on_lifecycle: Callable[[str, str, int, int], None],
                      on_metadata: Callable[[str, str, str], None]) -> None:
        """Before :meth:`connect`: call ``on_lifecycle(uuid, name, event, detail)`` (a
        :class:`DomEvent`) and ``on_metadata(uuid, name, untrusted_nsuri)`` on the loop for
        every domain event.  Events sent while no connection was up are lost: resync after
        every change of :attr:`generation`."""
        self._on_lifecycle = on_lifecycle
        self._on_metadata = on_metadata

    def _lifecycle_cb(self, _conn: Any, dom: Any, event: int, detail: int, _opaque: Any) -> None:
        if self._on_lifecycle is not None:
            self._on_lifecycle(dom.UUIDString(), dom.name(), event, detail)

    def _metadata_cb(self, _conn: Any, dom: Any, mtype: int, nsuri: str | None,
                     _opaque: Any) -> None:
        if self._on_metadata is not None and mtype == libvirt.VIR_DOMAIN_METADATA_ELEMENT:
            self._on_metadata(dom.UUIDString(), dom.name(), nsuri or "")

    def _lost(self) -> None:
        if self._closing:
            return
        self._connected.clear()
        for c in self._conns:
            if c.conn is not None:
                self._drop(c)
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    def _drop(self, c: _Connection) -> None:
        conn, c.conn = c.conn, None
        if conn is None:
            return
        for cid in c.callback_ids:
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(cid)
        c.callback_ids.clear()
        c.doms.clear()
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            refs = conn.close()
            log.debug("connection %d closed (%d references left)", c.index, refs)

    async def _reconnect(self) -> None:
        await self.connect(retry=True)
        log.info("reconnected to libvirtd at %s", self.uri)
        if self._on_reconnect is not None:
            await self._on_reconnect()

    async def wait_connected(self, limit: float) -> None:
        try:
            await at_most(self._connected.wait(), limit)
        except TimeoutError:
            raise HypervisorUnavailable(self.uri, f"no connection within {limit:.0f} s") \
                from None

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        for c in self._conns:
            self._drop(c)
            c.pool.shutdown(wait=False, cancel_futures=True)
        self._connected.clear()
        # Let the worker threads finish (bounded: a call on a hung QEMU never
        # returns), then let libvirt free its handles and timers while the loop
        # still runs: domain objects still referenced hold a connection open.
        for c in self._conns:
            with contextlib.suppress(TimeoutError):
                await at_most(asyncio.to_thread(c.pool.shutdown, wait=True), 2.0)
        gc.collect()
        impl = events.current()
        for _ in range(3):
            await asyncio.sleep(0.02)
            # until idle, at most 1 s (another connection of this process may keep it
            # busy): polled, as drain() cannot be given up on (cancelled, it leaves
            # its event behind and refuses the next call)
            for _tick in range(100):
                if impl is None or impl.is_idle():
                    break
                await asyncio.sleep(0.01)

    # -- calls -----------------------------------------------------------------

    async def call(self, fn: Callable[[libvirt.virConnect], T], *, what: str,
                   vm: str | None = None, limit: float | None = None) -> T:
        """``fn(conn)`` in a worker thread of the next connection, bounded by ``limit``
        seconds; a libvirt error becomes a :class:`HypervisorError` naming ``what``."""
        return await self._run(lambda _c, conn: fn(conn), what=what, vm=vm, limit=limit)

    async def _run(self, fn: Callable[[_Connection, libvirt.virConnect], T], *, what: str,
                   vm: str | None = None, limit: float | None = None,
                   after: Future[None] | None = None) -> T:
        if not self._connected.is_set():
            await self.wait_connected(limit or 10.0)
        c = next(self._rr)
        conn = c.conn
        if conn is None:
            raise HypervisorUnavailable(self.uri, "not connected")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(c.pool, fn if after is None else _after(after, fn), c, conn)
        try:
            if limit is None:
                return await fut
            return await at_most(asyncio.shield(fut), limit)
        except TimeoutError:
            # The thread goes on; its result is dropped.  Callers that care
            # (a pause that completes late) keep their own task on the operation.
            fut.add_done_callback(_consume)
            raise VMOperationTimeout(vm or "?", what, limit) from None
        except asyncio.CancelledError:  # (the daemon stops): the thread goes on, as above;
            fut.add_done_callback(_consume)  # its error is no "exception never retrieved"
            raise
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise VMNotFound(vm or "?") from exc
            if _connection_lost(exc):
                if c.conn is conn:
                    self._lost()
                raise HypervisorUnavailable(self.uri, exc.get_error_message()) from exc
            if vm is not None:
                raise VMOperationFailed(vm, what, exc.get_error_message()) from exc
            raise HypervisorError(f"{what}: {exc.get_error_message()}") from exc

    async def list_domains(self, running_only: bool = False,
                           keep: Callable[[str], bool] | None = None) -> list[DomainInfo]:
        """Every domain (whose name ``keep`` accepts: the others cost no call)."""
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING if running_only else 0
        return await self.call(lambda conn: domains.list_infos(conn, flags, keep),
                               what="list domains", limit=30)

    async def domain(self, uuid: str) -> DomainInfo:
        return await self.call(lambda conn: domains.info(conn.lookupByUUIDString(uuid)),
                               what="look up", vm=uuid, limit=30)

    async def on_domain(self, uuid: str, what: str, op: Callable[[Any], T],
                        name: str | None = None, after: Future[None] | None = None) -> T:
        """``op(dom)`` on the domain's kept handle (a lookup only on the first call of a
        connection) in a worker thread; bounding it in time is the caller's business.

        ``after``: the thread waits until it is done before the call (the caller does
        what must come first meanwhile, on the loop), and raises its exception instead
        of calling if it has one.  The caller must complete it."""
        try:
            return await self._run(lambda c, conn: op(c.dom(conn, uuid)), what=what,
                                   vm=name or uuid, after=after)
        except VMNotFound:
            for c in self._conns:  # gone: a domain defined again later gets a new lookup
                c.doms.pop(uuid, None)
            raise

    async def suspend(self, uuid: str, name: str | None = None,
                      after: Future[None] | None = None) -> None:
        await self.on_domain(uuid, "pause", lambda d: d.suspend(), name, after)

    async def resume(self, uuid: str, name: str | None = None) -> None:
        await self.on_domain(uuid, "resume", lambda d: d.resume(), name)

    async def pm_suspend(self, uuid: str, name: str | None = None,
                         after: Future[None] | None = None) -> None:
        """Guest suspend-to-RAM through the guest agent (blocks until the guest is in S3)."""
        await self.on_domain(
            uuid, "guest S3",
            lambda d: d.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_MEM, 0, 0),
            name, after)

    async def pm_wakeup(self, uuid: str, name: str | None = None) -> None:
        await self.on_domain(uuid, "guest wake-up", lambda d: d.pMWakeup(0), name)

    async def managed_save(self, uuid: str, name: str | None = None,
                           after: Future[None] | None = None) -> None:
        """Save the domain's RAM (libvirt's managed save).  A backup job of a sync reading
        the disks is ended first: libvirt saves no domain while one runs, and power
        does not wait for a sync (that sync fails and the next one reads again)."""
        def op(d: Any) -> None:
            if domains.end_backup_job(d):
                log.info("%s: ended a sync's backup job to save the VM", name or uuid)
            d.managedSave(0)
        await self.on_domain(uuid, "managed save", op, name, after)

    async def managed_save_remove(self, uuid: str, name: str | None = None) -> None:
        """Delete a domain's managed save image (its saved RAM), if it has one."""
        await self.on_domain(uuid, "remove saved state", lambda d: d.managedSaveRemove(0), name)

    async def start(self, uuid: str, name: str | None = None) -> None:
        """Start a defined VM; libvirt restores its managed save image if it has one."""
        await self.on_domain(uuid, "start", lambda d: d.create(), name)

    async def has_guest_agent(self, uuid: str, name: str | None = None) -> bool:
        """True if the domain has a qemu-guest-agent channel (so clock sync can work)."""
        return await self.call(
            lambda conn: domains.has_guest_agent(conn.lookupByUUIDString(uuid)),
            what="read the definition", vm=name or uuid, limit=10)

    async def sync_time(self, uuid: str, name: str | None = None) -> None:
        """Set the guest clock from the host's through the guest agent."""
        await self.on_domain(
            uuid, "clock sync",
            lambda d: d.setTime(flags=libvirt.VIR_DOMAIN_TIME_SYNC), name)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
