"""powerd's view of the running VMs it manages and their power policies, kept from libvirt's
domain events, so that a lid close or a sleep pauses without listing or reading anything.

:class:`View` is the pure core: a lifecycle event moves a VM in or out of the running set,
a metadata change (or a start) makes its policy unknown until it is read again.  A resync
(at start and after every reconnection to libvirtd, when events may have been lost)
replaces the view with a listing; events that arrive while the listing is in flight are
replayed over it, so the newest word wins.

:class:`RunningVMs` is the adapter: it takes the events from
:meth:`~vmclient.virt.libvirt.Hypervisor.watch_domains`, reads a policy that became
unknown in the background, and answers :meth:`RunningVMs.targets` from the view when it
is in step with the connection; otherwise (never synced, libvirtd reconnected and not yet
resynced) it lists, as every pause did before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ..errors import VMClientError
from ..virt.libvirt import POWER_NS, DomainInfo, DomEvent, DomState, Hypervisor, power_policy
from ..virt.libvirt import running_policies as _list_running

log = logging.getLogger(__name__)

Target = tuple[str, str, str | None]  # (UUID, name, power policy from the metadata)

# Lifecycle events: True the VM runs after it, False it does not, None: the VM is gone (its
# next start reads its policy afresh: a stopped VM boots from its persistent definition).
_RUNS: dict[DomEvent, bool | None] = {
    DomEvent.STARTED: True, DomEvent.RESUMED: True,
    DomEvent.SUSPENDED: False, DomEvent.PMSUSPENDED: False,
    DomEvent.STOPPED: None, DomEvent.CRASHED: None, DomEvent.UNDEFINED: None,
}


@dataclass(frozen=True)
class Guest:
    name: str
    running: bool
    policy: str | None = None  # unvalidated, as the metadata says
    known: bool = False  # policy read since the last start or metadata change
    version: int = 0  # bumps whenever the policy becomes unknown (a late read is dropped)


class View:
    """The managed VMs libvirt told us about (events, listings); pure."""

    def __init__(self, keep: Callable[[str], bool]) -> None:
        self.keep = keep
        self.guests: dict[str, Guest] = {}
        self._versions = 0
        self._replay: list[tuple[str, Any]] | None = None  # events during a resync

    def _next(self) -> int:
        self._versions += 1
        return self._versions

    def lifecycle(self, uuid: str, name: str, event: DomEvent) -> bool:
        """Apply a lifecycle event; True if the VM runs with a policy to read."""
        if self._replay is not None:
            self._replay.append(("lifecycle", (uuid, name, event)))
        return self._lifecycle(uuid, name, event)

    def _lifecycle(self, uuid: str, name: str, event: DomEvent) -> bool:
        if event not in _RUNS or not self.keep(name):
            return False
        runs = _RUNS[event]
        g = self.guests.get(uuid)
        if runs is None:
            self.guests.pop(uuid, None)
            return False
        if g is None or event == DomEvent.STARTED:
            g = Guest(name, runs, version=self._next())
        else:
            g = replace(g, name=name, running=runs)
        self.guests[uuid] = g
        return g.running and not g.known

    def metadata_changed(self, uuid: str, name: str, untrusted_nsuri: str) -> bool:
        """A metadata change; True if it makes a running VM's policy unknown."""
        if self._replay is not None:
            self._replay.append(("metadata", (uuid, name, untrusted_nsuri)))
        return self._metadata_changed(uuid, name, untrusted_nsuri)

    def _metadata_changed(self, uuid: str, name: str, untrusted_nsuri: str) -> bool:
        g = self.guests.get(uuid)
        if untrusted_nsuri != POWER_NS or g is None:
            return False
        self.guests[uuid] = replace(g, known=False, policy=None, version=self._next())
        return g.running

    def learn(self, uuid: str, version: int, untrusted_policy: str | None) -> None:
        """A policy read for ``version`` of the VM (dropped if it changed meanwhile)."""
        g = self.guests.get(uuid)
        if g is not None and g.version == version:
            self.guests[uuid] = replace(g, policy=untrusted_policy, known=True)

    def begin_resync(self) -> None:
        self._replay = []

    def end_resync(self, running: Iterable[Target]) -> None:
        """The listing (taken after :meth:`begin_resync`) replaces the view; the events that
        arrived meanwhile are applied again over it."""
        replay, self._replay = self._replay or [], None
        self.guests = {u: Guest(n, True, p, True, self._next())
                       for u, n, p in running if self.keep(n)}
        for kind, args in replay:
            if kind == "lifecycle":
                self._lifecycle(*args)
            else:
                self._metadata_changed(*args)

    def abort_resync(self) -> None:
        self._replay = None

    def running(self) -> list[tuple[str, Guest]]:
        return [(u, g) for u, g in self.guests.items() if g.running]


class RunningVMs:
    """:class:`View` fed by ``hv``'s domain events; answers what a pause must pause."""

    def __init__(self, hv: Hypervisor, keep: Callable[[str], bool]) -> None:
        self.hv = hv
        self.view = View(keep)
        self._synced = -1  # the connection generation the view is in step with
        self._reads: set[asyncio.Task[None]] = set()
        hv.watch_domains(self._on_lifecycle, self._on_metadata)

    @property
    def synced(self) -> bool:
        return self.hv.connected and self._synced == self.hv.generation

    # -- events (on the loop) ---------------------------------------------------

    def _on_lifecycle(self, uuid: str, name: str, event: int, _detail: int) -> None:
        try:
            ev = DomEvent(event)
        except ValueError:
            return
        if self.view.lifecycle(uuid, name, ev):
            self._read_later(uuid)

    def note(self, uuid: str, name: str, event: DomEvent) -> None:
        """What one of our own calls just did (its event may come after the next pause)."""
        self._on_lifecycle(uuid, name, event, 0)

    def _on_metadata(self, uuid: str, name: str, untrusted_nsuri: str) -> None:
        if self.view.metadata_changed(uuid, name, untrusted_nsuri):
            self._read_later(uuid)

    def _read_later(self, uuid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read(uuid))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read(self, uuid: str) -> None:
        g = self.view.guests.get(uuid)
        if g is None or g.known:
            return
        try:
            untrusted_policy = await power_policy(self.hv, uuid, g.name)
        except VMClientError as exc:  # read again by the next pause
            log.debug("power policy of %s not read: %s", g.name, exc)
            return
        self.view.learn(uuid, g.version, untrusted_policy)
        log.debug("power policy of %s read: %r", g.name, untrusted_policy)

    # -- resync ------------------------------------------------------------------

    async def resync(self, lister: Callable[[], Awaitable[list[DomainInfo]]]
                     ) -> list[DomainInfo]:
        """Call ``lister`` (every managed domain) and rebuild the view from its answer."""
        generation = self.hv.generation
        self.view.begin_resync()
        try:
            domains = await lister()
        except BaseException:
            self.view.abort_resync()
            raise
        self.view.end_resync((d.uuid, d.name, d.policy) for d in domains
                             if d.state == DomState.RUNNING)
        self._synced = generation
        return domains

    # -- the hot path ------------------------------------------------------------

    async def targets(self) -> list[Target]:
        """Every running managed VM and its policy: from the view (no call) when it is in
        step; a policy not yet read is read now; out of step, one listing."""
        if not self.synced:
            generation = self.hv.generation
            self.view.begin_resync()
            try:
                listing = await _list_running(self.hv, self.view.keep)
            except BaseException:
                self.view.abort_resync()
                raise
            self.view.end_resync(listing)
            self._synced = generation
        unknown = [u for u, g in self.view.running() if not g.known]
        if unknown:
            await asyncio.gather(*(self._read(u) for u in unknown))
        return [(u, g.name, g.policy) for u, g in self.view.running()]
