"""What a domain is and reads of one: run in a worker thread on a ``virDomain`` handle.

No connection management here (:mod:`.hypervisor`): these functions take a
``virConnect`` or ``virDomain`` the caller got from :meth:`Hypervisor.call` or
:meth:`Hypervisor.on_domain`, and may raise ``libvirt.libvirtError``, which the
caller turns into a :class:`~vmclient.errors.HypervisorError`.
"""

from __future__ import annotations

import enum
import logging
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

POWER_NS = "https://vmclient.org/xmlns/power/1"
VM_NS = "https://vmclient.org/xmlns/vm/1"
_JOB_BACKUP = 9  # virDomainJobOperation VIR_DOMAIN_JOB_OPERATION_BACKUP

log = logging.getLogger(__name__)


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


def state_word(state: DomState, reason: int) -> str:
    """A domain's state as vmclient lists it: libvirt's in lower case ("running",
    "paused", "shutoff", ...), except "starting" for a domain whose QEMU is still
    being started (libvirt: paused, reason starting-up, until its CPUs run): nobody
    paused it, and it runs in a moment."""
    if state == DomState.PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP:
        return "starting"
    return state.name.lower()


@dataclass(frozen=True)
class DomainInfo:
    uuid: str
    name: str
    state: DomState
    reason: int
    policy: str | None  # from <metadata><vmclient:power policy=…/>, unvalidated
    managed_save: bool
    persistent: bool

    @property
    def state_word(self) -> str:
        return state_word(self.state, self.reason)


def list_infos(conn: libvirt.virConnect, flags: int,
               keep: Callable[[str], bool] | None = None) -> list[DomainInfo]:
    """Every domain whose name ``keep`` accepts (the others cost no call)."""
    out = []
    for dom in conn.listAllDomains(flags):
        if keep is not None and not keep(dom.name()):
            continue
        try:
            out.append(info(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                raise
    return out


def info(dom: Any) -> DomainInfo:
    state, reason = dom.state(0)
    return DomainInfo(
        uuid=dom.UUIDString(),
        name=dom.name(),
        state=DomState(state),
        reason=reason,
        policy=power_policy_of(dom),
        managed_save=bool(dom.hasManagedSaveImage(0)),
        persistent=bool(dom.isPersistent()),
    )


def power_policy_of(dom: Any) -> str | None:
    """The power policy in the domain's metadata (``POWER_NS``), unvalidated; None if none."""
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


def running_policies(conn: libvirt.virConnect, keep: Callable[[str], bool]
                     ) -> list[tuple[str, str, str | None]]:
    """(UUID, name, power policy) of every running domain whose name ``keep`` accepts."""
    out = []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
        if keep(dom.name()):
            try:
                out.append((dom.UUIDString(), dom.name(), power_policy_of(dom)))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # vanished meanwhile
                    raise
    return out


def has_guest_agent(dom: Any) -> bool:
    """True if the domain has a qemu-guest-agent channel."""
    untrusted_xml = dom.XMLDesc(0)
    return any(t.get("name") == "org.qemu.guest_agent.0"
               for t in ET.fromstring(untrusted_xml).iterfind("devices/channel/target"))


def backup_disk_targets(untrusted_xml: str) -> list[str]:
    """The disks a backup job's XML (``virDomainBackupGetXMLDesc``) reads."""
    try:
        root = ET.fromstring(untrusted_xml)
    except ET.ParseError:
        return []
    return [d.get("name", "") for d in root.iterfind("disks/disk")
            if d.get("backup", "yes") == "yes" and d.get("name")]


def _has_job(dom: Any) -> bool:
    return bool(dom.jobStats(0).get("type", 0) != 0)


def end_backup_job(dom: Any) -> bool:
    """End the domain's backup job, if it has one, and wait until it is gone.

    Each disk's block job is cancelled with a synchronous ``blockJobAbort``: libvirt
    then handles that job's end in this call, not in its per-driver event worker.
    After a save + restore that worker can be stuck for 30 s in the handler of the
    virtio-serial port event QEMU sends at the first resume, which waits for a job
    kind the backup job does not allow (docs/sync.md, "libvirt 9.0: ending the
    backup job after a save + restore");
    ``abortJob`` leaves the end of the backup to that worker.  ``abortJob`` is the
    fallback.  Returns whether there was a backup job; a job still there after
    10 s is logged (the caller's next job then waits or fails in libvirt).
    """
    stats = dom.jobStats(0)
    if stats.get("type", 0) == 0 or stats.get("operation") != _JOB_BACKUP:
        return False
    try:
        targets = backup_disk_targets(dom.backupGetXMLDesc(0))
    except libvirt.libvirtError:
        targets = []  # ended meanwhile, or no backup to describe: abortJob below
    for target in targets:
        try:
            dom.blockJobAbort(target, 0)
        except libvirt.libvirtError as exc:
            # from the second disk on, libvirt 9.0 reports QEMU's 'NBD server not
            # running' (the backup's end stops it once per disk) though the abort worked
            log.debug("%s: blockJobAbort: %s", target, exc.get_error_message())
        if not _has_job(dom):
            return True
    if _has_job(dom):
        dom.abortJob()
    for _ in range(500):
        if not _has_job(dom):
            return True
        time.sleep(0.02)
    log.warning("%s: the backup job is still there 10 s after its abort (libvirt "
                "ends it when its event worker is free: up to 30 s)", dom.name())
    return True
