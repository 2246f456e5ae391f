"""The asyncio adapter to libvirt: the only module that imports ``libvirt``.

- The libvirt event loop implementation is registered on the running asyncio
  loop before the first connection (libvirt-python's ``libvirtaio``).
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
- ``libvirt.libvirtError`` never leaves this module: it becomes a
  :class:`~vmclient.errors.HypervisorError` (or a subclass) with a message a user
  can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import itertools
import logging
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import libvirtaio

from ..errors import (
    HypervisorError,
    HypervisorUnavailable,
    VMNotFound,
    VMOperationFailed,
    VMOperationTimeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CALLS_PER_CONNECTION = 5
# QEMU times its LUKS key derivation with the thread's CPU clock; where that clock
# is tick-based it may not move, and QEMU then fails to format with this text
# (25 % of `qemu-img create` with LUKS on a paravirtual AMD test machine).
PBKDF_BENCH_FLAKE = "Unable to get accurate CPU usage"
PBKDF_ATTEMPTS = 6  # each fails fast; six in a row: about 1 in 4,000
POWER_NS = "https://vmclient.org/xmlns/power/1"

_registered_loop: asyncio.AbstractEventLoop | None = None

# Errors reach us as exceptions; libvirt's default handler would also print them.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
logging.getLogger("virEventAsyncIOImpl").setLevel(logging.INFO)


class DomState(enum.IntEnum):
    NOSTATE = libvirt.VIR_DOMAIN_NOSTATE
    RUNNING = libvirt.VIR_DOMAIN_RUNNING
    BLOCKED = libvirt.VIR_DOMAIN_BLOCKED
    PAUSED = libvirt.VIR_DOMAIN_PAUSED
    SHUTDOWN = libvirt.VIR_DOMAIN_SHUTDOWN
    SHUTOFF = libvirt.VIR_DOMAIN_SHUTOFF
    CRASHED = libvirt.VIR_DOMAIN_CRASHED
    PMSUSPENDED = libvirt.VIR_DOMAIN_PMSUSPENDED

    @property
    def active(self) -> bool:
        return self not in (DomState.SHUTOFF, DomState.CRASHED, DomState.NOSTATE)


class DomEvent(enum.IntEnum):
    """A domain lifecycle event (``VIR_DOMAIN_EVENT_*``)."""

    DEFINED = libvirt.VIR_DOMAIN_EVENT_DEFINED
    UNDEFINED = libvirt.VIR_DOMAIN_EVENT_UNDEFINED
    STARTED = libvirt.VIR_DOMAIN_EVENT_STARTED
    SUSPENDED = libvirt.VIR_DOMAIN_EVENT_SUSPENDED
    RESUMED = libvirt.VIR_DOMAIN_EVENT_RESUMED
    STOPPED = libvirt.VIR_DOMAIN_EVENT_STOPPED
    SHUTDOWN = libvirt.VIR_DOMAIN_EVENT_SHUTDOWN
    PMSUSPENDED = libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED
    CRASHED = libvirt.VIR_DOMAIN_EVENT_CRASHED


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: DomState
    reason: int
    policy: str | None  # from <metadata><vmclient:power policy=…/>, unvalidated
    managed_save: bool
    persistent: bool


def _ensure_event_impl() -> None:
    """Register libvirt's asyncio event implementation on the running loop, once.

    libvirt takes one implementation per process.  A process that runs one
    loop after another (the CLI, tests) moves it to the new loop once the old
    one no longer runs; two loops running at once cannot share it.
    """
    global _registered_loop  # noqa: PLW0603
    loop = asyncio.get_running_loop()
    if _registered_loop is loop:
        return
    impl = libvirtaio.getCurrentImpl()
    if _registered_loop is not None and impl is not None:
        if _registered_loop.is_running():
            raise RuntimeError("libvirt's event implementation is bound to another running "
                               "event loop")
        impl.loop = loop
        impl._finished = None  # an asyncio.Event of the old loop, if any
    else:
        libvirtaio.virEventRegisterAsyncIOImpl(loop=loop)
    _registered_loop = loop


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


class Hypervisor:
    """A small set of connections to one libvirtd, used from asyncio."""

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
            await asyncio.wait_for(self._connected.wait(), limit)
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
                await asyncio.wait_for(asyncio.to_thread(c.pool.shutdown, wait=True), 2.0)
        gc.collect()
        impl = libvirtaio.getCurrentImpl()
        for _ in range(3):
            await asyncio.sleep(0.02)
            if impl is not None:
                try:
                    await asyncio.wait_for(impl.drain(), 1.0)
                except TimeoutError:
                    # drain() leaves its Event behind when cancelled, and asserts
                    # there is none on the next call.
                    impl._finished = None

    # -- calls -----------------------------------------------------------------

    async def _call(self, fn: Callable[[libvirt.virConnect], T], *, what: str,
                    vm: str | None = None, limit: float | None = None) -> T:
        return await self._run(lambda _c, conn: fn(conn), what=what, vm=vm, limit=limit)

    async def _run(self, fn: Callable[[_Connection, libvirt.virConnect], T], *, what: str,
                   vm: str | None = None, limit: float | None = None) -> T:
        if not self._connected.is_set():
            await self.wait_connected(limit or 10.0)
        c = next(self._rr)
        conn = c.conn
        if conn is None:
            raise HypervisorUnavailable(self.uri, "not connected")
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(c.pool, fn, c, conn)
        try:
            if limit is None:
                return await fut
            return await asyncio.wait_for(asyncio.shield(fut), limit)
        except TimeoutError:
            # The thread goes on; its result is dropped.  Callers that care
            # (a pause that completes late) use the *_late variants below.
            fut.add_done_callback(_consume)
            raise VMOperationTimeout(vm or "?", what, limit) from None
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
        return await self._call(lambda conn: _list_domains(conn, flags, keep),
                                what="list domains", limit=30)

    async def domain(self, uuid: str) -> DomainInfo:
        return await self._call(lambda conn: _info(conn.lookupByUUIDString(uuid)),
                                what="look up", vm=uuid, limit=30)

    async def _on_domain(self, uuid: str, what: str, op: Callable[[Any], T],
                         name: str | None = None) -> T:
        """Run ``op`` on the domain; bounding it in time is the caller's business."""
        try:
            return await self._run(lambda c, conn: op(c.dom(conn, uuid)), what=what,
                                   vm=name or uuid)
        except VMNotFound:
            for c in self._conns:  # gone: a domain defined again later gets a new lookup
                c.doms.pop(uuid, None)
            raise

    async def suspend(self, uuid: str, name: str | None = None) -> None:
        await self._on_domain(uuid, "pause", lambda d: d.suspend(), name)

    async def resume(self, uuid: str, name: str | None = None) -> None:
        await self._on_domain(uuid, "resume", lambda d: d.resume(), name)

    async def pm_suspend(self, uuid: str, name: str | None = None) -> None:
        """Guest suspend-to-RAM through the guest agent (blocks until the guest is in S3)."""
        await self._on_domain(
            uuid, "guest S3",
            lambda d: d.pMSuspendForDuration(libvirt.VIR_NODE_SUSPEND_TARGET_MEM, 0, 0),
            name)

    async def pm_wakeup(self, uuid: str, name: str | None = None) -> None:
        await self._on_domain(uuid, "guest wake-up", lambda d: d.pMWakeup(0), name)

    async def managed_save(self, uuid: str, name: str | None = None) -> None:
        """Save the domain's RAM (libvirt's managed save).  A backup job of a sync reading
        the disks is ended first: libvirt saves no domain while one runs, and power
        does not wait for a sync (that sync fails and the next one reads again)."""
        def op(d: Any) -> None:
            if _end_backup(d):
                log.info("%s: ended a sync's backup job to save the VM", name or uuid)
            d.managedSave(0)
        await self._on_domain(uuid, "managed save", op, name)

    async def managed_save_remove(self, uuid: str, name: str | None = None) -> None:
        """Delete a domain's managed save image (its saved RAM), if it has one."""
        await self._on_domain(uuid, "remove saved state", lambda d: d.managedSaveRemove(0), name)

    async def start(self, uuid: str, name: str | None = None) -> None:
        """Start a defined VM; libvirt restores its managed save image if it has one."""
        await self._on_domain(uuid, "start", lambda d: d.create(), name)

    async def has_guest_agent(self, uuid: str, name: str | None = None) -> bool:
        """True if the domain has a qemu-guest-agent channel (so clock sync can work)."""
        def check(conn: libvirt.virConnect) -> bool:
            untrusted_xml = conn.lookupByUUIDString(uuid).XMLDesc(0)
            return any(t.get("name") == "org.qemu.guest_agent.0"
                       for t in ET.fromstring(untrusted_xml).iterfind("devices/channel/target"))
        return await self._call(check, what="read the definition", vm=name or uuid, limit=10)

    async def sync_time(self, uuid: str, name: str | None = None) -> None:
        """Set the guest clock from the host's through the guest agent."""
        await self._on_domain(
            uuid, "clock sync",
            lambda d: d.setTime(flags=libvirt.VIR_DOMAIN_TIME_SYNC), name)


    # -- provisioning: definitions, secrets, networks -------------------------

    async def define(self, xml: str, name: str) -> str:
        """Define (or redefine) a persistent domain; returns its UUID."""
        return await self._call(lambda conn: conn.defineXML(xml).UUIDString(),
                                what="define", vm=name, limit=60)

    async def lookup_name(self, name: str) -> DomainInfo:
        return await self._call(lambda conn: _info(conn.lookupByName(name)), what="look up",
                                vm=name, limit=30)

    async def xml_desc(self, uuid: str, name: str | None = None) -> str:
        return await self._call(lambda conn: conn.lookupByUUIDString(uuid).XMLDesc(0),
                                what="read definition", vm=name or uuid, limit=30)

    async def destroy(self, uuid: str, name: str | None = None) -> None:
        """Power off at once (the guest gets no say)."""
        await self._on_domain(uuid, "power off", lambda d: d.destroy(), name)

    async def shutdown(self, uuid: str, name: str | None = None) -> None:
        """Ask the guest to shut down (ACPI); returns before it has."""
        await self._on_domain(uuid, "shut down", lambda d: d.shutdown(), name)

    async def undefine(self, uuid: str, name: str | None = None) -> None:
        """Remove a stopped domain's definition, its managed save and NVRAM."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        await self._on_domain(uuid, "undefine", lambda d: d.undefineFlags(flags), name)

    async def define_ephemeral_secret(self, uuid: str, value: bytes, what: str) -> None:
        """A private, ephemeral secret: never written to disk, never readable back."""
        xml = f"<secret ephemeral='yes' private='yes'><uuid>{uuid}</uuid></secret>"

        def op(conn: libvirt.virConnect) -> None:
            secret = conn.secretDefineXML(xml)
            try:
                secret.setValue(value)
            except libvirt.libvirtError:
                secret.undefine()
                raise
        await self._call(op, what=f"define the disk secret of {what}", limit=30)

    async def undefine_secret(self, uuid: str) -> bool:
        """Remove a secret; False if there was none."""
        def op(conn: libvirt.virConnect) -> bool:
            try:
                secret = conn.secretLookupByUUIDString(uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    return False
                raise
            secret.undefine()
            return True
        return await self._call(op, what="undefine a secret", limit=30)

    @contextlib.asynccontextmanager
    async def ephemeral_secrets(self, uuids: Iterable[str], value: bytes, what: str
                                ) -> AsyncIterator[None]:
        """The secrets ``uuids`` defined private and ephemeral with ``value`` for the block
        only: every one defined is undefined after it, on errors too."""
        defined: list[str] = []
        try:
            for uuid in sorted(set(uuids)):
                await self.define_ephemeral_secret(uuid, value, what)
                defined.append(uuid)
            yield
        finally:
            for uuid in defined:
                try:
                    await self.undefine_secret(uuid)
                except HypervisorError as exc:
                    log.warning("the disk secret %s of %s stays defined until libvirtd "
                                "restarts: %s", uuid, what, exc)

    async def list_secrets(self) -> list[str]:
        return await self._call(lambda conn: [s.UUIDString() for s in conn.listAllSecrets(0)],
                                what="list secrets", limit=30)

    async def ensure_network(self, name: str, xml: str) -> bool:
        """Define, autostart and start the network ``name`` unless it exists; True if new."""
        def op(conn: libvirt.virConnect) -> bool:
            created = False
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                net, created = conn.networkDefineXML(xml), True
            if not net.isActive():
                net.create()
            if not net.autostart():
                net.setAutostart(1)
            return created
        return await self._call(op, what=f"set up network {name}", limit=60)

    async def network_xml(self, name: str) -> str | None:
        def op(conn: libvirt.virConnect) -> str | None:
            try:
                return str(conn.networkLookupByName(name).XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return None
                raise
        return await self._call(op, what=f"read network {name}", limit=30)

    async def remove_network(self, name: str) -> None:
        def op(conn: libvirt.virConnect) -> None:
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return
                raise
            if net.isActive():
                net.destroy()
            net.undefine()
        await self._call(op, what=f"remove network {name}", limit=60)


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _list_domains(conn: libvirt.virConnect, flags: int,
                  keep: Callable[[str], bool] | None = None) -> list[DomainInfo]:
    out = []
    for dom in conn.listAllDomains(flags):
        if keep is not None and not keep(dom.name()):
            continue
        try:
            out.append(_info(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                raise
    return out


def _info(dom: Any) -> DomainInfo:
    state, reason = dom.state(0)
    return DomainInfo(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=DomState(state),
        reason=reason,
        policy=_power_policy(dom),
        managed_save=bool(dom.hasManagedSaveImage(0)),
        persistent=bool(dom.isPersistent()),
    )


def _power_policy(dom: Any) -> str | None:
    try:
        untrusted_xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, POWER_NS, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    try:
        return ET.fromstring(untrusted_xml).get("policy")
    except ET.ParseError:
        return None


# -- power: what to pause, in as few calls as a laptop going to sleep can afford -------------

async def power_policy(hv: Hypervisor, uuid: str, name: str) -> str | None:
    """The power policy in a domain's metadata (live, for a running one), unvalidated."""
    return await hv._on_domain(uuid, "read the power policy", _power_policy, name)


async def running_policies(hv: Hypervisor, keep: Callable[[str], bool]
                           ) -> list[tuple[str, str, str | None]]:
    """(UUID, name, power policy from the metadata) of every running domain whose name
    ``keep`` accepts: one listing (a domain's name and UUID come with it) and one metadata
    read per domain kept, nothing for the others."""
    def op(conn: libvirt.virConnect) -> list[tuple[str, str, str | None]]:
        out = []
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
            if keep(dom.name()):
                try:
                    out.append((dom.UUIDString(), dom.name(), _power_policy(dom)))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                        raise
        return out
    return await hv._call(op, what="list running domains", limit=30)


# -- provisioning: install media (module-level, like the sync section below) -----------------

def _eject(dom: Any) -> list[str]:
    config = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    removed = []
    for cd in config.iterfind("devices/disk[@device='cdrom']"):
        src = cd.find("source")
        removed.append(src.get("file", "") if src is not None else "")
        if dom.isActive():  # the medium out of the running guest's drive (tray forced open)
            empty = ET.fromstring(ET.tostring(cd))
            for el in empty.findall("source"):
                empty.remove(el)
            dom.updateDeviceFlags(ET.tostring(empty, encoding="unicode"),
                                  libvirt.VIR_DOMAIN_AFFECT_LIVE
                                  | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)
        dom.detachDeviceFlags(ET.tostring(cd, encoding="unicode"),
                              libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    return removed


async def eject_media(hv: Hypervisor, uuid: str, name: str) -> list[str]:
    """Every CD-ROM drive out of the definition (its medium out at once if the VM runs).

    Returns the media that were attached (empty: there was no CD-ROM drive).
    """
    return await hv._call(lambda conn: _eject(conn.lookupByUUIDString(uuid)),
                          what="eject the install media", vm=name, limit=60)

# -- the shell: a VM's display ----------------------------------------------------

async def open_graphics_fd(hv: Hypervisor, uuid: str, name: str) -> int:
    """A new connection to the running VM's SPICE (or VNC) server, as a socket fd (ours).

    ``virDomainOpenGraphicsFD`` with SKIPAUTH: the caller was authorised by us
    (polkit), so a graphics password, if any, is not asked for.  Each SPICE
    channel of a client needs a connection of its own.
    """
    def op(conn: libvirt.virConnect) -> int:
        dom = conn.lookupByUUIDString(uuid)
        if not dom.isActive():
            raise VMOperationFailed(name, "open the display", "the VM is not running")
        return int(dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH))
    return await hv._call(op, what="open the display", vm=name, limit=30)


# -- sync: disks, checkpoints and pull-mode backup jobs ----------------------------

VM_NS = "https://vmclient.org/xmlns/vm/1"
_JOB_BACKUP = 9  # virDomainJobOperation VIR_DOMAIN_JOB_OPERATION_BACKUP


@dataclass(frozen=True)
class DiskSource:
    target: str  # vda, sdb, ...
    path: str  # the image file
    fmt: str  # qcow2, raw
    secret: str = ""  # UUID of the libvirt secret of a LUKS-encrypted disk


@dataclass(frozen=True)
class SyncView:
    """What the synchronizer needs to know about a domain, read from its live XML."""

    uuid: str
    name: str
    active: bool
    kind: str | None  # <vmc:vm kind=…/> from provisioning: business | private; unvalidated
    sync: str | None  # off | disks | memory
    disks: tuple[DiskSource, ...]
    checkpoints: tuple[str, ...]
    running: bool = False  # vCPUs running (not paused)
    managed_save: bool = False  # stopped with a managed save image (its RAM)
    xml: str = ""  # the persistent definition (a restore defines the domain from it)
    qemu_ids: tuple[int, int] | None = None  # uid, gid of the running QEMU (DAC label)


def _sync_view(dom: Any) -> SyncView:
    root = ET.fromstring(dom.XMLDesc(0))
    disks = []
    for d in root.iterfind("devices/disk"):
        src, tgt, drv = d.find("source"), d.find("target"), d.find("driver")
        if d.get("device", "disk") != "disk" or d.get("type") != "file" or src is None \
                or tgt is None:
            continue
        sec = src.find("encryption/secret")
        disks.append(DiskSource(tgt.get("dev", ""), src.get("file", ""),
                                drv.get("type", "raw") if drv is not None else "raw",
                                sec.get("uuid", "") if sec is not None else ""))
    vm = root.find(f"metadata/{{{VM_NS}}}vm")
    state, _reason = dom.state(0)
    label = root.findtext("seclabel[@model='dac']/label", "")
    ids = re.fullmatch(r"\+?([0-9]+):\+?([0-9]+)", label)
    return SyncView(dom.UUIDString(), dom.name(), DomState(state).active,
                    vm.get("kind") if vm is not None else None,
                    vm.get("sync") if vm is not None else None, tuple(disks),
                    tuple(c.getName() for c in dom.listAllCheckpoints(0)),
                    state == libvirt.VIR_DOMAIN_RUNNING, bool(dom.hasManagedSaveImage(0)),
                    dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                    (int(ids[1]), int(ids[2])) if ids else None)


async def sync_view(hv: Hypervisor, uuid: str) -> SyncView:
    return await hv._call(lambda conn: _sync_view(conn.lookupByUUIDString(uuid)),
                          what="read the definition", vm=uuid, limit=30)


def _end_backup(dom: Any) -> bool:
    """Abort the domain's backup job, if it has one, and wait until it is gone."""
    stats = dom.jobStats(0)
    if stats.get("type", 0) == 0 or stats.get("operation") != _JOB_BACKUP:
        return False
    dom.abortJob()
    for _ in range(500):
        if dom.jobStats(0).get("type", 0) == 0:
            break
        time.sleep(0.02)
    return True


async def backup_pull(hv: Hypervisor, uuid: str, name: str, socket_path: str,
                      scratch: dict[str, str], checkpoint: str, incremental: str | None, *,
                      encrypt: dict[str, str] | None = None, resume: bool = False) -> float:
    """Begin a pull-mode backup of the disks in ``scratch`` and a new checkpoint.

    QEMU serves each disk's point in time over NBD on the Unix socket
    ``socket_path`` (export name = the disk's target) until :func:`backup_end`;
    it copies a cluster the guest overwrites meanwhile into the disk's scratch
    file first (copy-before-write), so the scratch holds only what the guest
    writes during the read.  With ``incremental`` the export also carries the
    context ``qemu:dirty-bitmap:backup-<target>``: the clusters dirty since that
    checkpoint.  ``encrypt`` (disk → secret UUID) makes a scratch file
    LUKS-encrypted under that libvirt secret.  ``resume`` resumes the (paused)
    domain as soon as the job has begun: the point in time is fixed by then.
    A backup job left over by a killed sync is aborted first.  Returns the
    ``time.monotonic()`` of the resume (0.0 without).
    """
    inc = f"<incremental>{incremental}</incremental>" if incremental else ""
    enc = encrypt or {}
    disks = "".join(
        f"<disk name='{t}' backup='yes' type='file'><scratch file='{path}'>" + (
            f"<encryption format='luks'><secret type='passphrase' uuid='{enc[t]}'/>"
            "</encryption>" if enc.get(t) else "") + "</scratch><driver type='qcow2'/></disk>"
        for t, path in scratch.items())
    backup_xml = (f"<domainbackup mode='pull'>{inc}<server transport='unix' "
                  f"socket='{socket_path}'/><disks>{disks}</disks></domainbackup>")
    cps = "".join(f"<disk name='{t}' checkpoint='bitmap'/>" for t in scratch)
    cp_xml = f"<domaincheckpoint><name>{checkpoint}</name><disks>{cps}</disks></domaincheckpoint>"

    def op(conn: libvirt.virConnect) -> float:
        dom = conn.lookupByUUIDString(uuid)
        if _end_backup(dom):
            log.info("%s: aborted a backup job left by an interrupted sync", name)
        for attempt in range(PBKDF_ATTEMPTS):
            try:
                dom.backupBegin(backup_xml, cp_xml, 0)
                break
            except libvirt.libvirtError as exc:
                # QEMU formats an encrypted scratch file with LUKS, whose PBKDF2
                # calibration fails now and then where the thread CPU clock is
                # coarse; the job has not begun and nothing is left: try again.
                if PBKDF_BENCH_FLAKE not in str(exc) or attempt == PBKDF_ATTEMPTS - 1:
                    raise
                log.info("%s: QEMU's LUKS calibration failed (%s); trying again", name,
                         PBKDF_BENCH_FLAKE)
        if not resume:
            return 0.0
        dom.resume()
        return time.monotonic()
    return await hv._call(op, what="backup", vm=name)


async def backup_end(hv: Hypervisor, uuid: str, name: str) -> None:
    """End the pull-mode backup job (its scratch files are then QEMU's no more).

    A domain that has stopped or gone meanwhile has no job left to end.
    """
    def op(conn: libvirt.virConnect) -> None:
        try:
            dom = conn.lookupByUUIDString(uuid)
            if dom.isActive():
                _end_backup(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
                return  # gone or stopped meanwhile: no job left
            raise
    await hv._call(op, what="end the backup job", vm=name, limit=60)


async def delete_checkpoints(hv: Hypervisor, uuid: str, name: str, keep: str | None) -> None:
    """Delete every checkpoint but ``keep``; unusable ones (QEMU was killed) by metadata only."""
    def op(conn: libvirt.virConnect) -> None:
        dom = conn.lookupByUUIDString(uuid)
        for cp in dom.listAllCheckpoints(0):
            if cp.getName() == keep:
                continue
            try:
                cp.delete(0)
            except libvirt.libvirtError:
                cp.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    await hv._call(op, what="delete checkpoints", vm=name, limit=120)


# -- memory state: save, restore ---------------------------------------------------

async def save_and_restore_paused(hv: Hypervisor, uuid: str, name: str, path: str) -> bool:
    """Save the domain's RAM to ``path`` and restore it from there at once, paused.

    The VM then holds exactly the state the file holds, so a backup job begun
    before it resumes captures disks that match the memory image.  Returns
    whether the vCPUs were running before (the caller resumes them then).  If
    the restore fails, the VM stays saved in ``path`` and the error says so.
    """
    def op(conn: libvirt.virConnect) -> bool:
        dom = conn.lookupByUUIDString(uuid)
        running = bool(dom.state(0)[0] == libvirt.VIR_DOMAIN_RUNNING)
        if _end_backup(dom):  # left by a killed sync: libvirt saves nothing while it runs
            log.info("%s: aborted a backup job left by an interrupted sync", name)
        dom.save(path)
        try:
            conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        except libvirt.libvirtError as exc:
            raise VMOperationFailed(name, "restore (memory state)",
                                    f"{exc.get_error_message()}; the VM is saved in {path}: "
                                    "restore that file to get it back") from exc
        return running
    return await hv._call(op, what="save and restore (memory state)", vm=name, limit=600)


async def restore_saved(hv: Hypervisor, path: str, xml: str | None, name: str, *,
                        paused: bool = False) -> None:
    """Restore a domain from a save image, with ``xml`` (same ABI; paths may differ)."""
    flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
    await hv._call(lambda conn: conn.restoreFlags(path, xml, flags), what="restore memory",
                   vm=name, limit=600)


async def save_image_xml(hv: Hypervisor, path: str, name: str) -> str:
    """The domain definition a save image carries."""
    return await hv._call(
        lambda conn: str(conn.saveImageGetXMLDesc(path, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)),
        what="read the saved definition", vm=name, limit=60)


def _open_blocking(uri: str) -> libvirt.virConnect:
    """A connection of its own for a one-off blocking call (no event loop)."""
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise HypervisorUnavailable(uri, exc.get_error_message()) from exc


def try_transient(uri: str, xml: str, settle: float = 1.0) -> str | None:
    """Start ``xml`` as a transient domain and destroy it again (blocking).

    None if QEMU started and was still running ``settle`` seconds later; else
    why not, in libvirt's or QEMU's words.  The domain is auto-destroyed with
    the connection, so nothing outlives the call.  Raises
    :class:`~vmclient.errors.HypervisorUnavailable` when libvirtd does not answer.
    """
    conn = _open_blocking(uri)
    try:
        try:
            dom = conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
        except libvirt.libvirtError as exc:
            return str(exc.get_error_message())
        try:
            time.sleep(settle)
            try:
                state, reason = dom.state()
            except libvirt.libvirtError as exc:  # gone: QEMU exited
                return f"QEMU exited within {settle:g} s ({exc.get_error_message()})"
            if state != libvirt.VIR_DOMAIN_RUNNING:
                return f"QEMU did not keep running (state {state}, reason {reason})"
            return None
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    finally:
        conn.close()


def versions(uri: str) -> tuple[int, int]:
    """libvirt's and the hypervisor's (QEMU's) version numbers, as libvirt reports them."""
    conn = _open_blocking(uri)
    try:
        return conn.getLibVersion(), conn.getVersion()
    finally:
        conn.close()
