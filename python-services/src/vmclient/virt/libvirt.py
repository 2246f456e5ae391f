"""The asyncio adapter to libvirt: its public surface (the ``virt`` package is the only
code that imports ``libvirt``).

- :mod:`.hypervisor`: :class:`Hypervisor`, a few connections to one libvirtd:
  calls in worker threads, reconnection, domain events, the domain operations
  (pause, resume, save, start, define...);
- :mod:`.resources`: its definitions, secrets and networks;
- :mod:`.domains`: what a domain is (:class:`DomainInfo`, :class:`DomState`,
  :class:`DomEvent`) and the reads run on one in a worker thread;
- :mod:`.power`: what powerd reads to know what to pause;
- :mod:`.backup`: what the synchronizer asks (disks, checkpoints, backup jobs,
  memory state);
- :mod:`.media`: install media and the display; :mod:`.probe`: the CPU probe's
  blocking calls.

The modules call each other only through :meth:`Hypervisor.call` and
:meth:`Hypervisor.on_domain`.  ``libvirt.libvirtError`` never leaves the
package: it becomes a :class:`~vmclient.errors.HypervisorError` (or a subclass)
with a message a user can act on.
"""

from __future__ import annotations

from .backup import (
    PBKDF_ATTEMPTS,
    PBKDF_BENCH_FLAKE,
    DiskSource,
    SyncView,
    backup_end,
    backup_pull,
    delete_checkpoints,
    pbkdf_retry_delay,
    restore_saved,
    save_and_restore_paused,
    save_image_xml,
    sync_view,
)
from .domains import POWER_NS, VM_NS, DomainInfo, DomEvent, DomState
from .hypervisor import MAX_CALLS_PER_CONNECTION, Hypervisor
from .media import eject_media, open_graphics_fd
from .power import power_policy, running_policies
from .probe import try_transient, versions

__all__ = [
    "MAX_CALLS_PER_CONNECTION",
    "PBKDF_ATTEMPTS",
    "PBKDF_BENCH_FLAKE",
    "POWER_NS",
    "VM_NS",
    "DiskSource",
    "DomEvent",
    "DomState",
    "DomainInfo",
    "Hypervisor",
    "SyncView",
    "backup_end",
    "backup_pull",
    "delete_checkpoints",
    "eject_media",
    "open_graphics_fd",
    "pbkdf_retry_delay",
    "power_policy",
    "restore_saved",
    "running_policies",
    "save_and_restore_paused",
    "save_image_xml",
    "sync_view",
    "try_transient",
    "versions",
]
