"""The laptop's enrolment, as the management agent (:class:`.agent.Agent`) does it: the
request through the drop box, IT's refusal or record, then the recovery key's escrow
(repository-format.md §5: the enrolment request and its refusal).  The agent's state
file holds where it is."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from ..errors import VMClientError
from ..host.inventory import ManageConfig
from ..host.keys import DeviceKeys, pin_admin_key, pinned_admin_key, ssh_identity
from ..host.lease import DAY, DeviceState, StateFile
from ..store import crypto
from ..store.errors import StoreError
from ..store.orders import check_device_name
from ..store.remote import RemoteStore
from ..store.repo import get_config
from . import enrol, recovery

log = logging.getLogger(__name__)


class Enrolling:
    """What the agent has that enrolment uses (set by :class:`.agent.Agent`)."""

    cfg: ManageConfig
    remote: RemoteStore
    keys: DeviceKeys
    state_file: StateFile
    wall: Callable[[], float]
    _escrow_warned: bool

    def tick(self, signed: tuple[int, ...] = ()) -> DeviceState:
        raise NotImplementedError

    async def request_enrolment(self, admin_key: bytes, name: str, code: str) -> str:
        check_device_name(name)  # before any key is replaced
        s = self.state_file.load()
        if s.enrolled and not s.wiped:
            raise VMClientError(f"this laptop is enrolled already as {s.device}")
        if s.wiped or s.enrolled:  # a new identity: the old device id stays wiped
            self.keys.new_identity()
        self.keys.ensure()
        _key, ssh_pub = ssh_identity(self.cfg.device_keys_dir, renew=s.wiped or s.enrolled)
        pin_admin_key(self.cfg.state_dir, admin_key)
        now = int(self.wall())
        device = await enrol.send_request(self.remote, self.keys.signing(), self.keys.wrapping(),
                                          name, code, now, ssh_key=ssh_pub)
        self.state_file.save(DeviceState(device=device, clock=s.clock, requested=now))
        return device

    async def enrolment_refused(self) -> str:
        """IT's reason if it refused the pending request (this agent's remote: the drop
        box's, for a laptop without an account yet); the laptop is then not enrolling
        any more (its keys stay: the next request is of the same device), and the
        reason stays in its state until the next request.  "" otherwise."""
        s = self.state_file.load()
        if s.enrolled or not s.device:
            return ""
        reason = await enrol.fetch_refusal(self.remote, pinned_admin_key(self.cfg.state_dir),
                                           s.device, s.requested)
        if reason is None:
            return ""
        self.state_file.save(replace(s, device="", requested=0, refused=reason))
        log.warning("IT refused the enrolment request of device %s: %s", s.device, reason)
        return reason

    async def complete_enrolment(self) -> bool:
        s = self.state_file.load()
        if s.enrolled or not s.device:
            return s.enrolled
        rec = await enrol.fetch_record(self.remote, pinned_admin_key(self.cfg.state_dir),
                                       s.device, self.keys.signing(), self.keys.wrapping())
        if rec is None:
            return False
        s = self.tick((rec.enrolled,))
        self.state_file.save(replace(s, enrolled=True,
                                     lease_until=s.clock.time + self.cfg.lease_days * DAY))
        log.info("enrolled as device %s (%s)", rec.device, rec.name)
        await self.escrow_recovery_key()
        return True

    async def escrow_recovery_key(self) -> None:
        """Record the repository's escrow key for ``vmclientctl recovery-key`` (once), and
        upload the recovery key it wrapped (:mod:`.recovery`).  Best effort: a failure is
        logged and the next poll tries again."""
        try:
            if recovery.escrow_key(self.cfg.state_dir) is None:
                cfg = await get_config(self.remote, pinned_admin_key(self.cfg.state_dir))
                recovery.note_escrow_key(self.cfg.state_dir, crypto.x25519_public(cfg.escrow_key))
            await recovery.upload_pending(self.remote, self.cfg.device_keys_dir,
                                          self.keys.signing().public_key())
        except (StoreError, OSError, VMClientError) as exc:
            if not self._escrow_warned:  # once per run: it is retried at every poll
                log.warning("recovery key not escrowed yet: %s", exc)
            self._escrow_warned = True

