"""What one sync is given (:class:`SyncJob`), what it reports (:class:`SyncResult`), how a
caller watches it (:class:`Hooks`), and how it fails: values only, no I/O."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..store import crypto
from ..store.chunker import DEFAULT_CHUNK_SIZE
from ..store.errors import LocalSyncError

MEMORY = "memory"  # name and role of the memory image in a snapshot; the sync policy saving it
DEFAULT_MEMORY_DIR = Path("/run/vmclient/sync")  # RAM-backed: plaintext guest RAM
MANAGED_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")  # libvirt's <name>.save images


class SyncRefused(LocalSyncError):
    """VM {!r} is not synchronised: {}"""


class CaptureLost(LocalSyncError):
    """VM {!r}: its disks could not be read to the end ({}); it was stopped or saved
    meanwhile. The previous snapshot stands and the next sync reads again"""


class SyncInterrupted(LocalSyncError):
    """VM {!r}: sync stopped at a safe point ({}); the next sync continues it"""


@dataclass(frozen=True)
class SyncJob:
    """One sync of the VM with libvirt UUID ``uuid``, signed by ``device``, sealed with
    the VM's data key set ``keys``.

    ``recipients`` get the data key wrapped for them (the device's X25519 key, the
    escrow key).  ``state_dir`` holds the local record (:mod:`.state`); the backup
    job's scratch files and NBD socket go to ``scratch_dir/<vm>``; a memory image to
    ``memory_dir`` (RAM-backed).  ``meta`` goes into the snapshot besides the VM's
    UUID and definition (the daemon passes the recipe as ``recipe``).  ``writers``:
    other devices whose snapshots the VM's directory may hold (after a rekey onto
    this device: ``manage.rekey.RestoreSource.signers``).
    """

    uuid: str
    device: crypto.Ed25519PrivateKey
    keys: crypto.KeySet
    state_dir: Path
    scratch_dir: Path
    recipients: Sequence[crypto.X25519PublicKey] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    memory_dir: Path = DEFAULT_MEMORY_DIR
    managed_save_dir: Path = MANAGED_SAVE_DIR
    meta: Mapping[str, str] = field(default_factory=dict)
    writers: Mapping[str, crypto.Ed25519PublicKey] = field(default_factory=dict)

    @property
    def device_id(self) -> str:
        return crypto.key_id(self.device.public_key())


@dataclass
class Hooks:
    """A caller's window into a sync in flight (``vmclient-syncd``).

    ``progress(done, total)`` gets the bytes of the capture read so far;
    ``interrupted()`` is asked between chunks and after the capture: when it
    says True the sync raises :class:`SyncInterrupted` with no write in flight
    (packs that arrived stay and are not uploaded again).
    """

    progress: Callable[[int, int], None] = lambda _done, _total: None
    interrupted: Callable[[], bool] = lambda: False


class SyncMode(enum.StrEnum):
    """How a sync read the disks."""

    INCREMENTAL = "incremental"  # the clusters dirty since the last checkpoint
    FULL = "full"  # every cluster (no usable checkpoint)
    AT_REST = "at-rest"  # a VM not running: its disks read at rest, compared by chunk id


@dataclass
class SyncResult:
    vm: str
    seq: int = 0
    mode: SyncMode | None = None  # None: the capture did not begin
    fallback: str = ""  # why an incremental sync became a full one
    chunks_covered: int = 0  # chunks the capture holds (all, or the dirty ones)
    chunks_read: int = 0  # of those, the ones with data (zero extents are not read)
    bytes_read: int = 0
    uploaded_chunks: int = 0
    uploaded_bytes: int = 0  # packs + index + snapshot + pointer + keys
    seconds: float = 0.0
    capture_seconds: float = 0.0  # backup job or conversion, and qemu-img map
    memory_bytes: int = 0  # size of the memory image in the snapshot (0: none)
    downtime_seconds: float = 0.0  # save + restore + job start, while the guest was down
    memory_sha256: str = ""  # of the memory image (also in the snapshot's meta)
