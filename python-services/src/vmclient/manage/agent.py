"""The laptop's side of remote management: the order loop, the lease, the wipe.

``Agent.poll()`` fetches ``devices/<id>/orders/``, verifies each new object
(signed by the pinned admin key, addressed to this device, numbered exactly
``last + 1``), executes it, records the new sequence, the trusted time and a
report in one atomic state write, then uploads the reports (signed by the
device).  Anything else — a forged, misaddressed, replayed or out-of-sequence
object — does nothing but a log line and one ``refused`` report.

``Agent.enforce()`` applies the lease: when it has run out (by trusted time),
or IT locked the laptop, or it was wiped, running business VMs are saved and
stopped; :meth:`Agent.start_vm` refuses to start them (see :mod:`.vms`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from ..errors import VMClientError
from ..host import assigned
from ..host.files import shred
from ..host.gate import GateConfig, StartGate
from ..host.inventory import ManageConfig
from ..host.keys import DeviceKeys, pinned_admin_key
from ..host.lease import DeviceState, Lease, StateFile, advance, boot_id, boottime
from ..store import crypto, layout
from ..store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError, StoreError
from ..store.format import open_envelope, signed_envelope
from ..store.orders import Order, OrderState, Report
from ..store.remote import RemoteStore, get_object
from ..tasks import at_most
from ..virt.libvirt import Hypervisor
from . import hostupdate, keyuse, rekey, status
from .enrolling import Enrolling
from .vms import BusinessWorkRefused, VMHost
from .wipe import Journal, plan, run_wipe

log = logging.getLogger(__name__)
_SEQ_RE = re.compile(r"^[0-9]{12}$")


class Installer(Protocol):
    """Provisioning's side of ``assign`` (:class:`.provisioning.ProvdInstaller`)."""

    async def assign(self, vm: str, untrusted_recipe: str, start: bool) -> str: ...

    async def restore(self, vm: str, from_device: str, start: bool) -> str: ...


class Agent(Enrolling):
    def __init__(self, cfg: ManageConfig, remote: RemoteStore, hv: Hypervisor, *,
                 keys: DeviceKeys | None = None, installer: Installer | None = None,
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = boottime,
                 boot: Callable[[], str] = boot_id,
                 after_wipe_step: Callable[[str], None] = lambda _s: None) -> None:
        self.cfg, self.remote, self.installer = cfg, remote, installer
        self.keys = keys or DeviceKeys(cfg.device_keys_dir)
        self.host = VMHost(hv, cfg)
        self.gate = StartGate(hv, GateConfig(cfg.device_keys_dir, cfg.vm_keys_dir, cfg.state_dir),
                              keys=self.keys, lease=self.lease)
        self.state_file = StateFile(cfg.state_dir)
        self.journal = Journal(cfg)
        self.wall, self.mono, self.boot = wall, mono, boot
        self.after_wipe_step = after_wipe_step
        self._escrow_warned = False

    # -- time and lease ---------------------------------------------------------------

    def tick(self, signed: tuple[int, ...] = ()) -> DeviceState:
        """Advance and persist the trusted time; the current state."""
        s = self.state_file.load()
        clock = advance(s.clock, int(self.wall()), self.mono(), self.boot(), signed)
        return self.state_file.save(replace(s, clock=clock))

    def lease(self) -> Lease:
        # a wipe under way: no business work
        return self.tick().lease(wipe_pending=self.journal.load() is not None)

    def status(self, lease: Lease | None = None) -> dict[str, Any]:
        """``lease``: one read elsewhere (:func:`vmclient.host.lease.read_lease`), else this
        agent's own (which records the trusted time it advances)."""
        s, lease = self.state_file.load(), lease or self.lease()
        return {"device": s.device, "enrolled": s.enrolled, "last_order": s.last_seq,
                "lease_until": s.lease_until, "lease_remaining": lease.remaining,
                "business_allowed": lease.business_allowed, "state": lease.reason,
                "locked": s.locked, "wiped": s.wiped, "reports_pending": len(s.outbox),
                "refused": s.refused}

    async def restore_source(self, vm: str) -> rekey.RestoreSource:
        """Where and how to restore ``vm`` after a ``rekey`` order (for :mod:`..sync.restore`)."""
        s = self.state_file.load()
        return await rekey.restore_source(self.remote, pinned_admin_key(self.cfg.state_dir),
                                          self.cfg, s.device, self.keys.wrapping(), vm,
                                          self.keys.signing().public_key())

    async def start_vm(self, name: str) -> None:
        """Start (or restore) a VM through the key gate, under the lease this agent keeps."""
        for vm in await self.host.list():
            if vm.name == name:
                return await self.gate.start(vm.uuid, vm.name)
        raise VMClientError(f"no vmclient VM named {name!r}")

    async def enforce(self) -> list[str]:
        """Save and stop running business VMs if business work is not allowed now."""
        lease = self.lease()
        if lease.business_allowed:
            return []
        stopped = []
        for vm in await self.host.list():
            if vm.kind == "business" and await self.host.save_and_stop(vm):
                log.warning("VM %s saved and stopped: %s", vm.name, lease.reason)
                stopped.append(vm.name)
        return stopped

    async def run(self, stop: asyncio.Event, interval: float = 300.0) -> None:
        """The daemon's loop: resume, then poll and enforce until ``stop`` is set.

        It wakes up at the latest when the lease runs out, so expiry is applied
        on time even offline.
        """
        await self.startup()
        while not stop.is_set():
            try:
                if not self.state_file.load().enrolled:
                    await self.complete_enrolment()
                await self.poll()
            except (StoreError, OSError) as exc:  # offline, or the server is suspect
                log.warning("datacenter: %s", exc)
            await self.enforce()
            remaining = self.lease().remaining
            wait = min(interval, remaining) if remaining else interval
            with contextlib.suppress(TimeoutError):
                await at_most(stop.wait(), max(wait, 1.0))

    # -- orders ---------------------------------------------------------------------------

    async def startup(self) -> None:
        """Finish an interrupted wipe, apply the lease, upload pending reports."""
        if self.journal.load() is not None:
            await self._finish_wipe()
        await self.enforce()
        await self.flush_reports()

    async def poll(self) -> None:
        s = self.tick()
        if not s.enrolled:
            return
        if self.journal.load() is not None:
            await self._finish_wipe()
        admin = pinned_admin_key(self.cfg.state_dir)
        entries = await self.remote.list(f"{layout.device_dir(s.device)}/orders")
        for entry in entries:
            await self._consider(entry.path, admin)
        await self.enforce()
        await self.flush_reports()
        await self.send_status()
        await self.escrow_recovery_key()

    async def send_status(self) -> None:
        """Replace ``devices/<id>/status``: last contact, release, lease, host update, uses
        of the recovery key (:mod:`.status`)."""
        s = self.state_file.load()
        record = self.cfg.recovery_record
        st = status.DeviceStatus(s.device, s.clock.time, status.release(), s.last_seq,
                                 s.lease_until, s.locked, s.wiped,
                                 hostupdate.status_table(self.cfg.state_dir),
                                 keyuse.newest(keyuse.read_record(record)) if record else ())
        await self.remote.put_atomic(status.status_path(s.device), signed_envelope(
            self.keys.signing(), "status", s.device, st.to_bytes()))

    async def _consider(self, path: str, admin: crypto.Ed25519PublicKey) -> None:
        s = self.state_file.load()
        untrusted_name = path.rsplit("/", 1)[-1]
        try:
            untrusted = await get_object(self.remote, path, "order",
                                         f"{s.device}/{untrusted_name}")
        except ObjectNotFound:
            return
        except RemoteIntegrityError as exc:  # larger than any order: not read, refused
            return self._refuse(crypto.sha256_hex(f"oversize {path}".encode()), path,
                                exc.problem)
        digest = crypto.sha256_hex(untrusted)
        if not _SEQ_RE.fullmatch(untrusted_name):
            return self._refuse(digest, path, "not an order number")
        seq = int(untrusted_name)
        if seq <= s.last_seq and s.executed.get(str(seq)) in (digest, None):
            return  # executed already, unchanged (or too old to remember)
        try:
            _signer, body = open_envelope({crypto.key_id(admin): admin}, untrusted, "order",
                                          f"{s.device}/{seq}", path)
            order = Order.parse(body, s.device, seq, path)
            OrderState(s.device, s.last_seq, s.clock.time).check(order, path)
        except RemoteIntegrityError as exc:
            return self._refuse(digest, path, exc.problem)
        await self._execute(order, digest)

    def _refuse(self, digest: str, path: str, problem: str) -> None:
        s = self.state_file.load()
        if digest in s.reported:
            return
        log.warning("order %s refused: %s", path, problem)
        self._queue(replace(s, reported=(*s.reported[-255:], digest)), 0, "refused",
                    f"{path}: {problem}")

    def _queue(self, s: DeviceState, order: int, outcome: str, detail: str) -> DeviceState:
        rep = Report(s.device, s.report_seq + 1, s.clock.time, order, outcome, detail)
        return self.state_file.save(replace(s, report_seq=rep.seq,
                                            outbox=(*s.outbox, vars(rep))))

    async def _execute(self, order: Order, digest: str) -> None:
        s = self.tick((order.issued,))
        outcome, detail, changes = "done", "", {}
        act = order.action
        if s.wiped and act != "wipe":
            outcome, detail = "refused", "this laptop was wiped: re-enrol it"
        elif act == "cancel":
            detail = f"cancelled by the admin before it ran (was {order.args['cancelled']})"
        elif act == "renew-lease":
            changes = {"lease_until": order.args["lease_until"]}
            detail = f"lease renewed until {_iso(order.args['lease_until'])}"
        elif act in ("lock", "unlock"):
            changes, detail = {"locked": act == "lock"}, f"business work {act}ed"
        elif act == "wipe":
            if self.journal.load() is None:
                self.journal.save(await plan(self.host, self.cfg, order.seq,
                                             order.args["include_private"]))
            detail = await self._finish_wipe(report=False)
            changes = {"wiped": True, "locked": True}
        elif act == "unassign":
            detail = await self._unassign(order.args["vm"])
            assigned.forget(self.cfg.state_dir, order.args["vm"])
        elif act == "rekey":
            try:
                detail = await rekey.accept(self.remote, pinned_admin_key(self.cfg.state_dir),
                                            self.cfg, s.device, self.keys.wrapping(), order)
            except (VMClientError, StoreError) as exc:
                outcome, detail = "failed", str(exc)
            else:
                if order.args.get("restore"):
                    outcome, detail = await self._restore(order)
        elif act == "host-update":
            a = order.args
            hostupdate.record_order(self.cfg.state_dir, a["release"], bool(a["downgrade"]),
                                    order.seq, str(a.get("maintenance", "")))
            detail = (f"host update to {a['release']}" + (" (downgrade allowed)" if
                      a["downgrade"] else "") + ": installed on AC and an unmetered link; "
                      "the result follows in the status")
        elif act == "assign" and self.installer is not None:
            try:
                detail = await self.installer.assign(order.args["vm"], order.args["recipe"],
                                                     bool(order.args.get("start", False)))
            except VMClientError as exc:
                outcome, detail = "failed", str(exc)
            assigned.record(self.cfg.state_dir, assigned.Assigned(
                order.args["vm"], _catalog(order.args["recipe"]), order.seq, outcome, detail))
        else:
            outcome, detail = "failed", f"{act} is not supported on this laptop yet"
        s = self.state_file.load()
        executed = {**{k: v for k, v in s.executed.items() if int(k) > order.seq - 1000},
                    str(order.seq): digest}
        s = replace(s, last_seq=order.seq, executed=executed, **changes)
        self._queue(s, order.seq, outcome, detail)
        if act == "wipe":
            self.journal.remove()
        log.log(logging.INFO if outcome == "done" else logging.WARNING,
                "order %d (%s): %s %s", order.seq, act, outcome, detail)

    async def _finish_wipe(self, *, report: bool = True) -> str:
        doc = await run_wipe(self.host, self.cfg, self.journal, self.after_wipe_step)
        assigned.clear(self.cfg.state_dir)
        names = [t["name"] for t in doc["targets"]]  # type: ignore[attr-defined]
        detail = (f"wiped {len(names)} VM(s) {', '.join(names) or '-'}: data keys destroyed "
                  f"first, then disks, saved states, definitions; kept: "
                  f"{', '.join(doc['kept']) or '-'}")  # type: ignore[arg-type]
        if report:  # resumed after a crash: the order is recorded here
            s = self.state_file.load()
            seq = int(str(doc["order"]))
            if s.last_seq < seq:
                s = replace(s, last_seq=seq, wiped=True, locked=True)
                self._queue(s, seq, "done", detail + " (resumed after an interruption)")
            self.journal.remove()
        return detail

    async def _restore(self, order: Order) -> tuple[str, str]:
        """The ``rekey`` order's ``restore``: through provd, as ``vmclientctl vm restore
        --stream`` (the VM runs at once, its disks fill in the background), or, when the
        admin said ``--no-start``, in full as ``vmclientctl vm restore``."""
        vm, start = str(order.args["vm"]), bool(order.args.get("start"))
        if self.installer is None:
            return "failed", (f"{vm}: data key installed, but restoring is not supported on "
                              f"this laptop yet: run vmclientctl vm restore {vm}")
        try:
            return "done", await self.installer.restore(vm, str(order.args["from_device"]),
                                                        start)
        except VMClientError as exc:
            return "failed", f"{vm}: data key installed; restore failed: {exc}"

    async def _unassign(self, name: str) -> str:
        for vm in await self.host.list():
            if vm.name == name and vm.kind == "business":
                await self.host.power_off(vm)
                shred(vm.key_file(self.cfg))
                await self.host.forget_secrets(vm)
                await self.host.remove_data(vm)
                await self.host.undefine(vm)
                return f"{name} removed (data key destroyed first)"
        return f"no business VM {name} here: nothing to do"

    async def flush_reports(self) -> int:
        s = self.state_file.load()
        signing = self.keys.signing() if s.outbox else None
        sent = 0
        for doc in s.outbox:
            rep = Report(**doc)
            blob = signed_envelope(signing, "report", f"{rep.device}/{rep.seq}",  # type: ignore[arg-type]
                                   rep.to_bytes())
            path = layout.report(rep.device, rep.seq)
            try:
                await self.remote.put_atomic(path, blob, exclusive=True)
            except LocalSyncError:
                if await self.remote.get(path, 0, len(blob) + 1) != blob:  # not ours: we
                    # are its only writer
                    await self.remote.put_atomic(path, blob)
            sent += 1
            cur = self.state_file.load()
            self.state_file.save(replace(cur, outbox=cur.outbox[1:]))
        return sent


def _catalog(untrusted_recipe: str) -> str:
    """The catalog image a recipe installs ("" if it does not parse)."""
    from ..provision import spec
    try:
        return spec.parse(untrusted_recipe, "(recipe)").image.catalog
    except VMClientError:
        return ""


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


__all__ = ["Agent", "BusinessWorkRefused", "Installer"]
