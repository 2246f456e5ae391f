"""What the synchronizer asks of libvirt: a domain's disks, checkpoints, pull-mode
backup jobs and memory state (save, restore)."""

from __future__ import annotations

import logging
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import libvirt

from ..errors import VMOperationFailed
from .domains import VM_NS, DomState, end_backup_job
from .hypervisor import Hypervisor

log = logging.getLogger(__name__)

# QEMU times its LUKS key derivation with the thread's CPU clock; where that clock
# is tick-based it may not move, and QEMU then fails to format with this text
# (25-27 % of `qemu-img create` with LUKS on a paravirtual AMD test machine under
# load, in clusters: two failures 40 ms apart are common, and six fast tries in a
# row all failed in a rehearsal). Nothing is written by a failed try.
PBKDF_BENCH_FLAKE = "Unable to get accurate CPU usage"
PBKDF_ATTEMPTS = 12


def pbkdf_retry_delay(attempt: int) -> float:
    """Seconds to wait before try `attempt + 1`: long enough to leave a cluster."""
    return min(0.25 * (attempt + 1), 1.5)


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
    return await hv.call(lambda conn: _sync_view(conn.lookupByUUIDString(uuid)),
                         what="read the definition", vm=uuid, limit=30)


async def backup_pull(hv: Hypervisor, uuid: str, name: str, socket_path: str,
                      scratch: dict[str, str], checkpoint: str, incremental: str | None, *,
                      encrypt: dict[str, str] | None = None, resume: bool = False,
                      reuse: bool = False) -> float:
    """Begin a pull-mode backup of the disks in ``scratch`` and a new checkpoint.

    QEMU serves each disk's point in time over NBD on the Unix socket
    ``socket_path`` (export name = the disk's target) until :func:`backup_end`;
    it copies a cluster the guest overwrites meanwhile into the disk's scratch
    file first (copy-before-write), so the scratch holds only what the guest
    writes during the read.  With ``incremental`` the export also carries the
    context ``qemu:dirty-bitmap:backup-<target>``: the clusters dirty since that
    checkpoint.  ``encrypt`` (disk → secret UUID) makes a scratch file
    LUKS-encrypted under that libvirt secret.  ``reuse``: the scratch files exist
    already, made by the caller (``VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL``); a LUKS
    scratch libvirt formats itself costs QEMU's default PBKDF time (2 s of CPU, much
    more under load), which a high-entropy key does not need.  ``resume`` resumes the (paused)
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
        if end_backup_job(dom):
            log.info("%s: aborted a backup job left by an interrupted sync", name)
        for attempt in range(PBKDF_ATTEMPTS):
            try:
                dom.backupBegin(backup_xml, cp_xml,
                                libvirt.VIR_DOMAIN_BACKUP_BEGIN_REUSE_EXTERNAL if reuse else 0)
                break
            except libvirt.libvirtError as exc:
                # QEMU formats an encrypted scratch file with LUKS, whose PBKDF2
                # calibration fails now and then where the thread CPU clock is
                # coarse; the job has not begun and nothing is left: try again.
                if PBKDF_BENCH_FLAKE not in str(exc) or attempt == PBKDF_ATTEMPTS - 1:
                    raise
                log.info("%s: QEMU's LUKS calibration failed (%s); trying again", name,
                         PBKDF_BENCH_FLAKE)
                time.sleep(pbkdf_retry_delay(attempt))  # (a libvirt worker thread, not the loop)
        if not resume:
            return 0.0
        dom.resume()
        return time.monotonic()
    return await hv.call(op, what="backup", vm=name)


async def backup_end(hv: Hypervisor, uuid: str, name: str) -> None:
    """End the pull-mode backup job (its scratch files are then QEMU's no more).

    A domain that has stopped or gone meanwhile has no job left to end.
    """
    def op(conn: libvirt.virConnect) -> None:
        try:
            dom = conn.lookupByUUIDString(uuid)
            if dom.isActive():
                end_backup_job(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,
                                        libvirt.VIR_ERR_OPERATION_INVALID):
                return  # gone or stopped meanwhile: no job left
            raise
    await hv.call(op, what="end the backup job", vm=name, limit=60)


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
    await hv.call(op, what="delete checkpoints", vm=name, limit=120)


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
        if end_backup_job(dom):  # left by a killed sync: libvirt saves nothing while it runs
            log.info("%s: aborted a backup job left by an interrupted sync", name)
        dom.save(path)
        try:
            conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_PAUSED)
        except libvirt.libvirtError as exc:
            raise VMOperationFailed(name, "restore (memory state)",
                                    f"{exc.get_error_message()}; the VM is saved in {path}: "
                                    "restore that file to get it back") from exc
        return running
    return await hv.call(op, what="save and restore (memory state)", vm=name, limit=600)


async def restore_saved(hv: Hypervisor, path: str, xml: str | None, name: str, *,
                        paused: bool = False) -> None:
    """Restore a domain from a save image, with ``xml`` (same ABI; paths may differ)."""
    flags = libvirt.VIR_DOMAIN_SAVE_PAUSED if paused else libvirt.VIR_DOMAIN_SAVE_RUNNING
    await hv.call(lambda conn: conn.restoreFlags(path, xml, flags), what="restore memory",
                  vm=name, limit=600)


async def save_image_xml(hv: Hypervisor, path: str, name: str) -> str:
    """The domain definition a save image carries."""
    return await hv.call(
        lambda conn: str(conn.saveImageGetXMLDesc(path, libvirt.VIR_DOMAIN_SAVE_IMAGE_XML_SECURE)),
        what="read the saved definition", vm=name, limit=60)
