"""Pausing, resuming and saving every VM, in parallel, bounded, remembered.

A saved VM is restored through the key gate (:mod:`vmclient.manage.gate`): its
encrypted disks need their secret handed to libvirt again, and a business VM
only gets it under the lease.  A refused restore leaves the VM saved, held and
listed in :attr:`VMController.refused` (powerd's ``RestoreRefused``); the next
restore (AC again, the next start) tries again.

The controller remembers which VMs *it* paused or saved (``held``), persists
that in the state directory (so a daemon or libvirtd restart forgets nothing),
and only ever undoes its own work: a VM the user had paused stays paused.

One VM that fails or hangs never holds up the others: every VM's operation is
its own task, bounded by its timeout and by the caller's deadline.  A pause
that finishes after its deadline is still recorded (or undone, if the others
were resumed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import HypervisorUnavailable, VMClientError, VMOperationTimeout
from ..log import vm_logger
from ..manage.gate import StartGate, StartRefused
from ..virt.libvirt import DomainInfo, DomState, Hypervisor
from .config import VMs
from .policy import Cause, VMPolicy

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True)
class Held:
    """A VM this daemon paused (``pause``/``s3``) or saved (``save``)."""

    uuid: str
    name: str
    action: str  # "pause" | "s3" | "save"
    cause: str  # Cause value


class StateFile:
    """``state.json`` in the state directory, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"

    def load(self) -> dict[str, Held]:
        try:
            untrusted = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never crash on our own state: keep the broken file for inspection.
            broken = self.path.with_suffix(f".broken-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.rename(broken)
            log.error("%s is unreadable (%s); moved to %s and starting afresh",
                      self.path, exc, broken)
            return {}
        if not isinstance(untrusted, dict) or untrusted.get("version") != STATE_VERSION:
            log.error("%s has an unknown format; ignoring it", self.path)
            return {}
        held = {}
        for item in untrusted.get("held", []):
            try:
                h = Held(str(item["uuid"]), str(item["name"]), str(item["action"]),
                         str(item["cause"]))
            except (KeyError, TypeError):
                log.error("%s: ignoring a malformed entry %r", self.path, item)
                continue
            held[h.uuid] = h
        return held

    def save(self, held: Iterable[Held]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        data = json.dumps({"version": STATE_VERSION, "held": [asdict(h) for h in held]},
                          indent=1, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class VMController:
    def __init__(self, hv: Hypervisor, cfg: VMs, state: StateFile, gate: StartGate,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.hv = hv
        self.gate = gate
        self.refused: dict[str, str] = {}  # VM name -> why its restore was refused
        self.cfg = cfg
        self.state = state
        self.on_change = on_change
        self.held: dict[str, Held] = state.load()
        self._resumed_generation = 0  # bumps on every resume: late pauses check it
        self._lock = asyncio.Lock()  # one whole-fleet operation at a time
        self._late: set[asyncio.Task[Any]] = set()
        self._batch = False

    # -- queries ----------------------------------------------------------------

    def policy_for(self, d: DomainInfo) -> VMPolicy:
        name = self.cfg.policies.get(d.name) or d.policy or self.cfg.default_policy
        try:
            return VMPolicy(name)
        except ValueError:
            vm_logger(d.name).warning("unknown power policy %r in the domain metadata; "
                                      "using %r", name, self.cfg.default_policy)
            return VMPolicy(self.cfg.default_policy)

    def paused_by_us(self) -> list[tuple[str, str]]:
        return sorted((h.name, h.action) for h in self.held.values())

    def saved_cause(self) -> Cause:
        for h in self.held.values():
            if h.action == "save":
                return Cause(h.cause)
        return Cause.NONE

    def paused_cause(self) -> Cause:
        for h in self.held.values():
            if h.action != "save":
                return Cause(h.cause)
        return Cause.NONE

    def manages(self, d: DomainInfo) -> bool:
        return d.name.startswith(self.cfg.name_prefix)

    async def domains(self, running: bool = False) -> list[DomainInfo]:
        return [d for d in await self.hv.list_domains(running) if self.manages(d)]

    # -- bookkeeping -----------------------------------------------------------

    def _record(self, h: Held, persist: bool = True) -> None:
        self.held[h.uuid] = h
        if persist:
            self._persist()

    def _forget(self, uuids: Iterable[str]) -> None:
        changed = False
        for u in uuids:
            h = self.held.pop(u, None)
            if h is not None:
                self.refused.pop(h.name, None)
                changed = True
        if changed:
            self._persist()

    def _persist(self) -> None:
        try:
            self.state.save(self.held.values())
        except OSError as exc:
            log.error("cannot write %s: %s (what was paused is kept in memory only)",
                      self.state.path, exc)
        self.on_change()

    async def reconcile(self) -> None:
        """Drop what no longer holds (VM gone, or resumed/started by someone else)."""
        domains = {d.uuid: d for d in await self.domains()}
        stale = []
        for h in list(self.held.values()):
            d = domains.get(h.uuid)
            expected = {"pause": DomState.PAUSED, "s3": DomState.PMSUSPENDED,
                        "save": DomState.SHUTOFF}[h.action]
            if d is None:
                log.warning("VM %s (%s) that we had %sd no longer exists; forgetting it",
                            h.name, h.uuid, h.action)
                stale.append(h.uuid)
            elif d.state != expected:
                log.info("VM %s is %s now, not as we left it (%s); it is no longer ours to undo",
                         h.name, d.state.name.lower(), h.action)
                stale.append(h.uuid)
        self._forget(stale)
        self.on_change()

    # -- pause -----------------------------------------------------------------

    async def pause_all(self, cause: Cause, deadline: float) -> list[str]:
        """Pause every running VM per its policy; returns the names now held by us.

        Returns by ``deadline`` (a ``loop.time()``) whatever happens to single VMs.
        """
        async with self._lock:
            domains = await self._bounded(self.domains(running=True), deadline, "list VMs")
            targets = [d for d in domains or [] if d.state == DomState.RUNNING
                       and d.uuid not in self.held]
            generation = self._resumed_generation
            self._batch = True  # one state write for the whole batch, not one per VM
            jobs = {asyncio.ensure_future(self._pause_one(d, cause, deadline, generation)): d
                    for d in targets}
            try:
                if jobs:
                    await asyncio.wait(jobs, timeout=max(0.0, deadline - _now()))
            finally:
                self._batch = False
                self._persist()
            for job, d in jobs.items():
                if not job.done():
                    vm_logger(d.name).error(
                        "not paused in time; going on without it (it is recorded if it "
                        "pauses later)")
                    self._late.add(job)
                    job.add_done_callback(self._late.discard)
                elif job.exception() is not None:
                    vm_logger(d.name).error("%s", job.exception())
            return [h.name for h in self.held.values() if h.uuid in {d.uuid for d in targets}]

    async def _pause_one(self, d: DomainInfo, cause: Cause, deadline: float,
                         generation: int) -> None:
        vlog = vm_logger(d.name)
        policy = self.policy_for(d)
        if policy == VMPolicy.IGNORE:
            vlog.info("left running (policy ignore)")
            return
        action = policy.value
        if policy == VMPolicy.S3:
            try:
                # keep a fifth of the time left for the fallback pause
                limit = min(self.cfg.s3_timeout_s, 0.8 * (deadline - _now()))
                await self._op(self.hv.pm_suspend(d.uuid, d.name), limit, d.name, "guest S3")
            except VMClientError as exc:
                vlog.warning("%s; pausing it instead", exc)
                action = "pause"
        if action == "pause":
            await self.hv.suspend(d.uuid, d.name)
        elif action == "save":
            await self.hv.managed_save(d.uuid, d.name)
        if generation != self._resumed_generation:
            # Finished after the others were resumed: undo it now.
            vlog.warning("%s finished late, after the resume; undoing it", action)
            await self._undo(Held(d.uuid, d.name, action, cause.value))
            return
        vlog.info("%s", {"pause": "paused", "s3": "suspended to RAM (guest S3)",
                         "save": "saved"}[action])
        self._record(Held(d.uuid, d.name, action, cause.value), persist=not self._batch)

    async def _op(self, coro: Awaitable[None], limit: float, name: str, what: str) -> None:
        """Await ``coro`` for at most ``limit`` seconds; it goes on in the background."""
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, limit))
        if not done:
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            raise VMOperationTimeout(name, what, limit)
        task.result()

    # -- resume ----------------------------------------------------------------

    async def resume_all(self) -> list[str]:
        """Undo every pause of ours, in parallel, and restore the VMs whose ``save`` policy
        saved them for the pause; returns the names resumed.

        Saves for a critical battery or a shutdown wait for :meth:`restore_saved`.
        """
        async with self._lock:
            self._resumed_generation += 1
            await self.reconcile()
            todo = [h for h in self.held.values() if h.action != "save"]
            saved = [h for h in self.held.values()
                     if h.action == "save" and h.cause in _PAUSE_CAUSES]
            resumed = await self._undo_many(todo, self.cfg.timeout_s)
            return resumed + await self._undo_many(saved, self.cfg.save_timeout_s)

    async def restore_saved(self) -> list[str]:
        """Start every VM we saved (libvirt restores its memory from the managed save)."""
        async with self._lock:
            await self.reconcile()
            todo = [h for h in self.held.values() if h.action == "save"]
            return await self._undo_many(todo, self.cfg.save_timeout_s)

    async def _undo_many(self, todo: list[Held], limit: float) -> list[str]:
        results = await asyncio.gather(
            *(self._op(self._undo(h), limit, h.name, _UNDO_NAME[h.action]) for h in todo),
            return_exceptions=True)
        done = []
        for h, r in zip(todo, results, strict=True):
            if isinstance(r, StartRefused):
                vm_logger(h.name).error("VM %s not restored, it stays saved: %s", h.name,
                                        r.reason)
                self.refused[h.name] = r.reason
            elif isinstance(r, BaseException):
                vm_logger(h.name).error("%s", r)
            else:
                done.append(h)
        if any(isinstance(r, StartRefused) for r in results):
            self.on_change()
        self._forget(h.uuid for h in done)
        return [h.name for h in done]

    async def _undo(self, h: Held) -> None:
        if h.action == "pause":
            await self.hv.resume(h.uuid, h.name)
        elif h.action == "s3":
            await self.hv.pm_wakeup(h.uuid, h.name)
        else:
            await self.gate.start(h.uuid, h.name)  # the disks' secret, under the lease
        vm_logger(h.name).info("%s", {"pause": "resumed", "s3": "woken from guest S3",
                                      "save": "restored from its saved state"}[h.action])

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
            *(self._op(self.hv.sync_time(u, n), limit, n, "clock sync")
              for u, n in uuids), return_exceptions=True)
        for (_, n), r in zip(uuids, results, strict=True):
            if isinstance(r, BaseException):
                vm_logger(n).debug("clock not synced (no guest agent?): %s", r)
            else:
                vm_logger(n).info("guest clock synced")

    # -- save ------------------------------------------------------------------

    async def save_all(self, cause: Cause) -> list[str]:
        """Managed save of every active VM (policy ``ignore`` excepted): no state is lost."""
        async with self._lock:
            domains = await self.domains()
            targets = [d for d in domains if d.state.active and d.persistent
                       and self.policy_for(d) != VMPolicy.IGNORE]
            sem = asyncio.Semaphore(2)  # disk-bound: two at a time

            async def save(d: DomainInfo) -> None:
                async with sem:
                    if d.state == DomState.PMSUSPENDED:
                        await self._op(self.hv.pm_wakeup(d.uuid, d.name),
                                       self.cfg.timeout_s, d.name, "guest wake-up")
                    await self._op(self.hv.managed_save(d.uuid, d.name),
                                   self.cfg.save_timeout_s, d.name, "managed save")
                    vm_logger(d.name).info("saved (%s)", cause.value)
                    self.held[d.uuid] = Held(d.uuid, d.name, "save", cause.value)
                    self._persist()

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
            return await asyncio.wait_for(coro, max(0.05, deadline - _now()))
        except TimeoutError:
            log.error("%s did not answer before the deadline", what)
            return None

    async def drain(self, limit: float) -> None:
        """Wait for late operations (at shutdown)."""
        if self._late:
            await asyncio.wait(self._late, timeout=limit)


_UNDO_NAME = {"pause": "resume", "s3": "guest wake-up", "save": "restore"}
_PAUSE_CAUSES = {c.value for c in (Cause.SLEEP, Cause.LID, Cause.USER)}  # what resume undoes


def _now() -> float:
    return asyncio.get_running_loop().time()
