"""Pausing, resuming and saving every VM, in parallel, bounded, remembered.

A saved VM is restored through the key gate (:mod:`vmclient.host.gate`): its
encrypted disks need their secret handed to libvirt again, and a business VM
only gets it under the lease.  A refused restore leaves the VM saved, held and
listed in :attr:`HeldTable.refused` (powerd's ``RestoreRefused``); the next
restore (AC again, the next start) tries again.

The controller remembers which VMs *it* paused or saved and for which causes
(a :class:`~vmclient.power.holds.HeldTable` of :class:`~vmclient.power.policy.Hold`),
and only ever undoes its own work: a VM the user had paused stays paused.  The table is
written (:mod:`~vmclient.power.statefile`: pauses on a tmpfs, saves durably) *before*
the pauses of a batch are asked for, so a daemon killed in the middle of a batch finds
on its next start every VM it was pausing; :meth:`VMController.reconcile` keeps the
ones that are paused (ours) and forgets the ones still running (the pause never
happened) or resumed by someone else.

One VM that fails or hangs never holds up the others: every VM's operation is
its own task, bounded by its timeout and by the caller's deadline (:mod:`.bounds`).
A pause that finishes after its deadline is still recorded, or undone at once if
its causes ended meanwhile (the others were resumed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, NamedTuple

from ..errors import (
    HypervisorUnavailable,
    VMClientError,
    VMNotFound,
    VMOperationFailed,
)
from ..host.gate import StartGate, StartRefused
from ..log import vm_logger
from ..tasks import at_most
from ..virt.libvirt import DomainInfo, DomEvent, DomState, Hypervisor
from . import policy
from .bounds import now, within
from .config import VMs
from .holds import HeldTable
from .policy import Cause, Causes, Hold, HoldAction, VMPolicy
from .running import RunningVMs

log = logging.getLogger(__name__)

class VMController:
    def __init__(self, hv: Hypervisor, cfg: VMs, table: HeldTable, gate: StartGate,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.hv = hv
        self.gate = gate
        self.cfg = cfg
        self.table = table  # what we hold, and restores refused (RestoreRefused)
        self.on_change = on_change
        # What runs and with which policy, from libvirt's events: a pause lists nothing.
        self.running = RunningVMs(hv, self._managed_name)
        self._lock = asyncio.Lock()  # one whole-fleet operation at a time
        self._inflight: set[str] = set()  # UUIDs whose pause runs (maybe past its deadline)
        self._late: set[asyncio.Task[Any]] = set()

    # -- queries ----------------------------------------------------------------

    def policy_for(self, d: DomainInfo) -> VMPolicy:
        return self._policy(d.name, d.policy)

    def _policy(self, vm: str, untrusted_policy: str | None) -> VMPolicy:
        name = self.cfg.policies.get(vm) or untrusted_policy or self.cfg.default_policy
        try:
            return VMPolicy(name)
        except ValueError:
            vm_logger(vm).warning("unknown power policy %r in the domain metadata; "
                                  "using %r", name, self.cfg.default_policy)
            return VMPolicy(self.cfg.default_policy)

    @property
    def held(self) -> dict[str, Hold]:
        return self.table.holds

    def _done(self) -> list[Hold]:
        """Held, its pause or save done (not still running)."""
        return [h for u, h in self.held.items() if u not in self._inflight]

    def paused_by_us(self) -> list[tuple[str, HoldAction]]:
        return sorted((h.name, h.action) for h in self._done())

    def held_for(self) -> list[tuple[str, list[int]]]:
        """(VM name, its causes as :class:`Cause` values) of every VM held."""
        return sorted((h.name, sorted(int(c) for c in h.causes)) for h in self._done())

    def manages(self, d: DomainInfo) -> bool:
        return self._managed_name(d.name)

    def _managed_name(self, name: str) -> bool:
        return name.startswith(self.cfg.name_prefix)

    async def domains(self, running: bool = False) -> list[DomainInfo]:
        return await self.hv.list_domains(running, keep=self._managed_name)

    # -- bookkeeping -----------------------------------------------------------

    async def reconcile(self) -> None:
        """Drop what no longer holds (VM gone, or resumed/started by someone else, or a pause
        that never happened); note which of pause and guest S3 a VM really got."""
        domains = {d.uuid: d for d in await self.running.resync(self.domains)}
        table = dict(self.held)
        for u, h in self.held.items():
            d = domains.get(u)
            if u in self._inflight:
                continue
            if d is None:
                log.warning("VM %s (%s) that we had %sd no longer exists; forgetting it",
                            h.name, u, h.action.label)
                del table[u]
            elif d.state == DomState.PAUSED and (h.action != HoldAction.SAVE or h.paused):
                table[u] = replace(h, action=HoldAction.PAUSE, paused=False)
            elif d.state == DomState.PMSUSPENDED and h.action != HoldAction.SAVE:
                table[u] = replace(h, action=HoldAction.S3)
            elif d.state == DomState.SHUTOFF and h.action == HoldAction.SAVE and d.managed_save:
                pass
            else:
                log.info("VM %s is %s now, not as we left it (%s); it is no longer ours to undo",
                         h.name, d.state.name.lower(), h.action.label)
                del table[u]
        for u in set(self.held) - set(table):
            self.table.refused.pop(self.held[u].name, None)
        self.table.set(table)
        self.on_change()

    # -- pause -----------------------------------------------------------------

    async def pause_all(self, cause: Cause, deadline: float,
                        only: str | None = None) -> list[str]:
        """Pause every running VM (or only the one named ``only``) per its policy, for
        ``cause``; returns the names of the VMs held among them.  Every VM already held
        (or ``only``) is held for ``cause`` too.

        Returns by ``deadline`` (a ``loop.time()``) whatever happens to single VMs
        (their errors are logged); raises only if the VMs cannot be listed.
        """
        async with self._lock:
            # No call before the suspends: the running VMs and their policies come from
            # libvirt's events (a listing only when they may have been lost).
            running = await self._bounded(self.running.targets(), deadline, "list VMs")
            plan = [(_Target(u, n), self._policy(n, p)) for u, n, p in running or []
                    if u not in self._inflight and only in (None, n)]
            plan = [(d, p) for d, p in plan if p != VMPolicy.IGNORE]
            # Recorded before the calls: a daemon killed in the middle of the batch
            # finds them on its next start (reconcile keeps the ones really paused).
            before = set(self.held)
            table = policy.add_cause({u: h for u, h in self.held.items()
                                      if u not in {d.uuid for d, _ in plan}}, cause, only)
            for d, p in plan:
                table = policy.held(table, d.uuid, d.name, HoldAction.of(p), cause)
                self._inflight.add(d.uuid)  # held, not yet done (PausedByUs waits for it)
            # Each call goes to its thread first and waits there until the record is
            # written: the threads wake (one after another) while it is.
            recorded: Future[None] = Future()
            with self.table.batch():  # once more at the end if anything turned out otherwise
                self.table.set(table)
                jobs = {asyncio.ensure_future(self._pause_one(d, p, deadline, d.uuid in before,
                                                              recorded)): d for d, p in plan}
                try:
                    await asyncio.sleep(0)  # each job hands its call to its thread
                    self.table.flush()
                except BaseException:
                    recorded.set_exception(VMClientError("the pause was not recorded"))
                    raise
                recorded.set_result(None)
                if jobs:
                    await asyncio.wait(jobs, timeout=max(0.0, deadline - now()))
            for job, d in jobs.items():
                if not job.done():
                    vm_logger(d.name).error(
                        "not paused in time; going on without it (it is recorded if it "
                        "pauses later)")
                    self._late.add(job)
                    job.add_done_callback(self._late.discard)
                elif job.exception() is not None:
                    vm_logger(d.name).error("%s", job.exception())
            return [d.name for d, _ in plan if d.uuid in self.held
                    and d.uuid not in self._inflight]

    async def _pause_one(self, d: _Target, pol: VMPolicy, deadline: float,
                         ours: bool, recorded: Future[None]) -> None:
        """``ours``: held before this batch (paused by us, or running again); the first
        call waits in its thread for ``recorded``."""
        vlog = vm_logger(d.name)
        action = HoldAction.of(pol)
        try:
            if action == HoldAction.S3:
                try:
                    # keep a fifth of the time left for the fallback pause
                    limit = min(self.cfg.s3_timeout_s, 0.8 * (deadline - now()))
                    await within(self.hv.pm_suspend(d.uuid, d.name, recorded), limit,
                                 d.name, "guest S3")
                except VMClientError as exc:
                    vlog.warning("%s; pausing it instead", exc)
                    action = HoldAction.PAUSE
            if action == HoldAction.PAUSE:
                await self._suspend(d, ours, recorded)
            elif action == HoldAction.SAVE:
                await self.hv.managed_save(d.uuid, d.name, recorded)
            self.running.note(d.uuid, d.name, _DONE[action])
        except HypervisorUnavailable:
            raise  # done or not: reconcile decides once libvirtd is back
        except BaseException:
            self.table.forget([d.uuid])  # libvirt refused it: the VM is not ours
            raise
        finally:
            self._inflight.discard(d.uuid)
            self.on_change()
        h = self.held.get(d.uuid)
        if h is None:
            return
        if h.action != action:
            h = replace(h, action=action)
            self.table.set({**self.held, d.uuid: h})
        vlog.info("%s", {HoldAction.PAUSE: "paused", HoldAction.S3: "suspended to RAM (guest S3)",
                         HoldAction.SAVE: "saved"}[action])
        if h.due:
            # Finished late, after every cause of it ended (the others were resumed).
            vlog.warning("%s finished late, after the resume; undoing it", action.label)
            await self._undo(d.uuid, h)
            self.table.forget([d.uuid])

    async def _suspend(self, d: _Target, ours: bool, recorded: Future[None]) -> None:
        try:
            await self.hv.suspend(d.uuid, d.name, recorded)
        except VMOperationFailed:
            # The view said it runs, but an event of ours may not have come yet (resumed
            # then paused again): a VM we hold that is paused is still ours.
            if not ours or (await self.hv.domain(d.uuid)).state != DomState.PAUSED:
                raise

    # -- resume ----------------------------------------------------------------

    async def release(self, ends: Causes, only: str | None = None) -> list[str]:
        """End ``ends`` on every VM held (or only the one named ``only``), then undo every
        such VM held for no cause any more (those whose earlier undo failed too), in
        parallel: resume a pause, wake a guest S3, restore a managed save through the key
        gate.  Returns the names undone.

        The ended causes are written first, so what fails (libvirtd gone) or is killed
        here is undone at the next start or when libvirtd is back.  A VM gone, or
        running already, counts as undone.
        """
        async with self._lock:
            self.table.set(policy.release(self.held, ends, only))
            # No reconcile first (it costs four calls per VM): an undo that finds its VM
            # gone or already running counts as done (see _undo).
            todo = [(u, self.held[u]) for u in policy.due(self.held)
                    if u not in self._inflight and only in (None, self.held[u].name)]
            fast = [(u, h) for u, h in todo if h.action != HoldAction.SAVE]
            slow = [(u, h) for u, h in todo if h.action == HoldAction.SAVE]
            return (await self._undo_many(fast, self.cfg.timeout_s)
                    + await self._undo_many(slow, self.cfg.save_timeout_s))

    async def _undo_many(self, todo: list[tuple[str, Hold]], limit: float) -> list[str]:
        results = await asyncio.gather(
            *(within(self._undo(u, h), limit, h.name, _UNDO_NAME[h.action]) for u, h in todo),
            return_exceptions=True)
        done = []
        for (u, h), r in zip(todo, results, strict=True):
            if isinstance(r, StartRefused):
                vm_logger(h.name).error("VM %s not restored, it stays saved: %s", h.name,
                                        r.reason)
                self.table.refused[h.name] = r.reason
            elif isinstance(r, BaseException):
                vm_logger(h.name).error("%s (tried again when libvirtd is back, at the next "
                                        "resume and at start)", r)
            else:
                done.append((u, h))
        if any(isinstance(r, StartRefused) for r in results):
            self.on_change()
        self.table.forget(u for u, _ in done)
        return [h.name for _, h in done]

    async def _undo(self, uuid: str, h: Hold) -> None:
        try:
            if h.action == HoldAction.PAUSE:
                await self.hv.resume(uuid, h.name)
            elif h.action == HoldAction.S3:
                await self.hv.pm_wakeup(uuid, h.name)
            else:
                await self.gate.start(uuid, h.name)  # the disks' secret, under the lease
                if h.paused:
                    await self.hv.resume(uuid, h.name)  # saved while we held it paused
        except VMNotFound:
            vm_logger(h.name).warning("VM %s that we had %sd no longer exists; forgetting it",
                                      h.name, h.action.label)
            return
        except VMOperationFailed:
            # Resumed or started by someone else, or by an earlier undo of ours that
            # outlived its bound while libvirtd was away: a VM that runs is undone.
            if (await self.hv.domain(uuid)).state != DomState.RUNNING:
                raise
        self.running.note(uuid, h.name, DomEvent.RESUMED)
        vm_logger(h.name).info("%s", {HoldAction.PAUSE: "resumed",
                                      HoldAction.S3: "woken from guest S3",
                                      HoldAction.SAVE: "restored from its saved state"}[h.action])

    async def sync_clocks(self, names: list[str], limit: float = 2.0) -> None:
        """Re-sync guest clocks after a resume, where a guest agent answers."""
        if not names:
            return
        domains = {d.name: d for d in await self.domains()}
        uuids = []
        for n in names:
            if n in domains:
                with contextlib.suppress(VMClientError):
                    if await self.hv.has_guest_agent(domains[n].uuid, n):
                        uuids.append((domains[n].uuid, n))
        results = await asyncio.gather(
            *(within(self.hv.sync_time(u, n), limit, n, "clock sync")
              for u, n in uuids), return_exceptions=True)
        for (_, n), r in zip(uuids, results, strict=True):
            if isinstance(r, BaseException):
                vm_logger(n).debug("clock not synced (no guest agent?): %s", r)
            else:
                vm_logger(n).info("guest clock synced")

    # -- save ------------------------------------------------------------------

    async def save_all(self, cause: Cause) -> list[str]:
        """Managed save of every active VM (policy ``ignore`` excepted), for ``cause``: no
        state is lost.  Every VM already held is held for ``cause`` too."""
        async with self._lock:
            domains = await self.domains()
            targets = [d for d in domains if d.state.active and d.persistent
                       and self.policy_for(d) != VMPolicy.IGNORE]
            self.table.set(policy.add_cause(self.held, cause))
            sem = asyncio.Semaphore(2)  # disk-bound: two at a time

            async def save(d: DomainInfo) -> None:
                async with sem:
                    if d.state == DomState.PMSUSPENDED:
                        await within(self.hv.pm_wakeup(d.uuid, d.name),
                                     self.cfg.timeout_s, d.name, "guest wake-up")
                    await within(self.hv.managed_save(d.uuid, d.name),
                                 self.cfg.save_timeout_s, d.name, "managed save")
                    vm_logger(d.name).info("saved (%s)", cause.label)
                    self.running.note(d.uuid, d.name, DomEvent.STOPPED)
                    before = self.held.get(d.uuid)
                    paused = before is not None and (before.action == HoldAction.PAUSE
                                                     or before.paused)
                    self.table.set(policy.held(self.held, d.uuid, d.name, HoldAction.SAVE,
                                               cause, paused=paused))

            results = await asyncio.gather(*(save(d) for d in targets), return_exceptions=True)
            lost = [d for d, r in zip(targets, results, strict=True)
                    if isinstance(r, HypervisorUnavailable)]
            if lost:
                # libvirtd restarted under us: the VMs still run; try once more.
                log.warning("libvirtd went away while saving; retrying %d VM(s) once it is back",
                            len(lost))
                with contextlib.suppress(VMClientError):
                    await self.hv.wait_connected(30.0)
                    again = await asyncio.gather(*(save(d) for d in lost),
                                                 return_exceptions=True)
                    retried = dict(zip((d.uuid for d in lost), again, strict=True))
                    results = [retried.get(d.uuid, r) for d, r in zip(targets, results,
                                                                      strict=True)]
            for d, r in zip(targets, results, strict=True):
                if isinstance(r, BaseException):
                    vm_logger(d.name).error("not saved: %s", r)
            return [d.name for d, r in zip(targets, results, strict=True)
                    if not isinstance(r, BaseException)]

    async def _bounded(self, coro: Awaitable[Any], deadline: float, what: str) -> Any:
        try:
            return await at_most(coro, max(0.05, deadline - now()))
        except TimeoutError:
            log.error("%s did not answer before the deadline", what)
            return None

    async def drain(self, limit: float) -> None:
        """Wait for late operations (at shutdown)."""
        if self._late:
            await asyncio.wait(self._late, timeout=limit)


class _Target(NamedTuple):
    uuid: str
    name: str


_DONE = {HoldAction.PAUSE: DomEvent.SUSPENDED, HoldAction.S3: DomEvent.PMSUSPENDED,
         HoldAction.SAVE: DomEvent.STOPPED}
_UNDO_NAME = {HoldAction.PAUSE: "resume", HoldAction.S3: "guest wake-up",
              HoldAction.SAVE: "restore"}
