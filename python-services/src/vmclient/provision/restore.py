"""Restore a synchronised VM onto this laptop: ``vmclientctl vm restore <vm>``.

Order of work (nothing is defined before every chunk has verified):

1. The VM's data key, wrapped for this device's X25519 key, from
   ``devices/<this device>/vms/<vm>/keys/<wrapping id>``: signed by the admin
   (``vmclient-admin rekey`` wrote it from the escrow copy) or by this device
   (its own VM).
2. The snapshot (``latest`` or ``--snapshot``) under this device's directory
   (after a rekey the admin copied the VM's directory there,
   repository-format.md §8.5), signed by this device or by one of the former
   writers whose admin-signed device records the copy lists under ``writers/``
   (:func:`vmclient.store.repo.writers`); ``latest.seq`` at least
   ``min_seq``.  A data key the agent already stored on the ``rekey`` order is
   used (it must equal the one the datacenter wrapped for this device).
3. Download the chunks the local cache lacks into a sealed cache of its own
   (``<state>/cache/.vm-<vm>``, the Receiver's :class:`ChunkCache`), as the
   Receiver does: each one authenticated (AES-GCM, its id bound in) before it
   is kept, and opened and checked against its id once, in step 4, before any
   of its bytes is written.  The cache is the resume journal and deduplicates:
   an interrupted restore fetches only what is missing.  It is removed once the
   VM is restored.
4. Only then: the data key is stored wrapped for this device, every disk is
   written as a new LUKS qcow2 under it (plaintext staged in the RAM-backed
   staging directory only), the memory image (if any) is written to the
   staging directory, the domain is defined — rebuilt from the snapshot's
   recipe (:mod:`.redefine`: never the old laptop's XML as it is) — and from
   the memory image the VM is restored running where it was, with that
   rebuilt definition (libvirt refuses a memory image whose devices differ),
   its disks' secret given to libvirt as an ephemeral secret for that moment
   only.  A snapshot with memory is restored only if the start gate's lease
   allows the VM to run (checked before anything is downloaded;
   :mod:`vmclient.host.gate`).  The memory image is deleted at once.

A failure before the VM is defined (a chunk that does not match its id
included) leaves no domain, disks or key behind (the chunk cache stays for the
next attempt, less the segment holding such a chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import uuid as uuidlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import VMClientError, VMNotFound
from ..host.assigned import accepted_min_seq
from ..host.files import check_ram_backed, write_private
from ..host.inventory import parse_domain
from ..host.keys import DeviceKeys
from ..store import crypto, layout
from ..store.chunkstore import ChunkStore
from ..store.errors import ObjectNotFound, RemoteIntegrityError
from ..store.objects import ZERO_ID, BlobRef, ChunkMap, Manifest
from ..store.pack import open_blob
from ..store.plan import DownloadPlan, plan_download
from ..store.remote import RemoteStore
from ..store.repo import get_wrapped_key, load_snapshot, writers
from ..tasks import all_of
from ..virt.libvirt import restore_saved
from .cache import ChunkCache
from .installer import Installed, Provisioner, VMExists
from .progress import Progress, ProgressFn
from .receiver import blank_partial, write_disk
from .redefine import Definition, RestoreError, rebuild

log = logging.getLogger(__name__)
MEMORY = "memory"


class NotInDatacenter(VMNotFound):
    """No such VM in the datacenter for this device: {!r} (device {}; another laptop's VM needs IT's 'vmclient-admin restore VM --to DEVICE' first)"""  # noqa: E501


@dataclass
class Prepared:
    """What a restore knows before it downloads: the verified snapshot and its definition."""

    remote: RemoteStore
    device: str
    keys: crypto.KeySet
    snapshot: Manifest
    domain: Definition
    accepted: bool  # the data key is the one the agent accepted on a ``rekey`` order


async def prepare(prov: Provisioner, vm: str, *, snapshot: str | None = None,
                  from_device: str = "", min_seq: int = 0, runs: bool = False,
                  network: bool = True) -> Prepared:
    """Steps 1-2 (docstring above): the key, the snapshot, the rebuilt definition; the
    start gate if the VM will run (``runs``: a streamed restore; or a snapshot with
    memory), before anything is downloaded or laid out; the VM's network (unless not
    ``network``: the caller makes it, at once with other work)."""
    receiver = prov.receiver
    if receiver is None:
        raise RestoreError(vm, "no datacenter repository is configured")
    remote, admin, me = receiver.remote, receiver.admin, prov.keys.device
    accepted = await _refuse_existing(prov, vm)
    dev = me.device_id()
    mine = {dev: me.signing().public_key()}
    signers = await vm_signers(remote, admin, me, vm)
    if from_device and from_device not in signers:
        raise RestoreError(vm, f"device {from_device} is not among the VM's writers "
                           f"({', '.join(sorted(signers))}): was it re-keyed for this device?")
    key_path = layout.vm_key(dev, vm, me.wrapping_id())
    try:
        keys = await get_wrapped_key(remote, key_path, {crypto.key_id(admin): admin, **mine},
                                     f"vm:{vm}", me.wrapping())
    except ObjectNotFound:
        if not await remote.list(f"{layout.vm_dir(dev, vm)}/keys"):
            raise NotInDatacenter(vm, dev) from None
        raise RestoreError(vm, f"the datacenter holds no data key for this device at "
                           f"{key_path}: IT has to rekey the VM for it first") from None
    # never older than what IT verified when it rekeyed the VM for this device (a server
    # replaying an older ``latest`` is refused)
    min_seq = max(min_seq, await asyncio.to_thread(accepted_min_seq, prov.cfg.manage_dir, vm))
    try:
        m = await load_snapshot(remote, signers, keys, dev, vm, snapshot, min_seq)
    except ObjectNotFound as exc:
        raise RestoreError(vm, f"no snapshot at {exc.path}") from None
    domain = rebuild(vm, m.meta, f"snapshot {m.label}", PurePosixPath(prov.vm_dir(vm)),
                     [d.name for d in m.disks if d.role != MEMORY],
                     secret_uuid=str(uuidlib.uuid4()), cpu=prov.cfg.cpu_profile(),
                     networks=prov.networks, anti_spoofing=prov.cfg.networks.anti_spoofing)
    if runs or any(d.role == MEMORY for d in m.disks):  # it will run: the lease first
        target = parse_domain(domain.xml, m.meta["uuid"])
        if target is not None:
            prov.gate.allowed(target)
    if network:
        await prov.ensure_network(domain.recipe.zone)  # a fresh laptop has none yet
    if accepted and prov.keys.load(vm).secret != keys.secret:
        raise RestoreError(vm, f"the data key stored here ({prov.keys.path(vm)}) is not "
                           "the one the datacenter wrapped for this device")
    return Prepared(remote, dev, keys, m, domain, accepted)


async def vm_signers(remote: RemoteStore, admin: crypto.Ed25519PublicKey, me: DeviceKeys,
                     vm: str) -> dict[str, crypto.Ed25519PublicKey]:
    """Who may have written ``vm``'s snapshots under this device's directory: this device,
    and the former writers a re-keyed VM's directory lists (admin-signed device records)."""
    dev = me.device_id()
    former = await writers(remote, admin, dev, vm)
    return {**{d: crypto.ed25519_public(r.signing_key) for d, r in former.items()},
            dev: me.signing().public_key()}


async def restore(prov: Provisioner, vm: str, *, snapshot: str | None = None,
                  from_device: str = "", min_seq: int = 0) -> Installed:
    """Restore ``vm`` from the datacenter; running where it was if the snapshot holds memory."""
    progress = Progress(vm=vm)
    progress.begin("catalog", 0)
    prov.report(progress)
    p = await prepare(prov, vm, snapshot=snapshot, from_device=from_device, min_seq=min_seq)
    cache = ChunkCache(prov.cfg.state_dir, f".vm-{vm}")
    try:
        await download(prov.report, p.remote, layout.vm_store(p.device, vm), p.keys,
                       p.snapshot, cache, progress)
        installed = await _rebuild(prov, vm, p.keys, p.snapshot, p.domain, cache, progress,
                                   adopt=not p.accepted)
    finally:
        cache.close()
    await asyncio.to_thread(cache.clear)  # restored: the VM's own syncs take over
    return installed


async def _refuse_existing(prov: Provisioner, vm: str) -> bool:
    """As an install refuses an existing VM; but a data key alone is expected after the
    agent accepted a ``rekey`` order (it stores the key where provisioning keeps it).
    True if such a key is there."""
    if not prov.keys.exists(vm) or prov.install_marker(vm).exists():
        await prov.refuse_existing(vm)
        return False
    with contextlib.suppress(VMNotFound):
        await prov.hv.lookup_name(vm)
        raise VMExists(vm, "a libvirt domain of that name")
    if prov.vm_dir(vm).exists():
        raise VMExists(vm, f"its disks in {prov.vm_dir(vm)}")
    return True


async def download(report: ProgressFn, remote: RemoteStore, root: str, keys: crypto.KeySet,
                   m: Manifest, cache: ChunkCache, progress: Progress) -> None:
    """Step 3: the chunks of ``m`` the cache lacks, as the Receiver downloads an image
    (:meth:`ChunkStore.fetch_sealed`): each one authenticated (AES-GCM, its id bound
    in) and kept sealed as it arrives; it is opened and checked against its id once,
    when its disk or the memory image is written.  What arrived is kept when this
    fails: the next attempt resumes."""
    store = ChunkStore(remote, root, keys)
    index = await store.load_index()
    plan = plan_download(m, cache.ids(), index, store_path=store.root)
    progress.begin("download", plan.download_bytes)
    report(progress)
    try:
        # (aclosing: whatever ends the loop, no worker appends to the cache after it)
        async with contextlib.aclosing(store.fetch_sealed(plan, keep=cache.keep)) as ranges:
            async for blobs in ranges:
                progress.done += sum(ref.length for _cid, ref, _sealed in blobs)
                report(progress)
    except ObjectNotFound as exc:
        raise missing_pack(exc) from None
    finally:
        await asyncio.to_thread(cache.sync)
    report(progress)


def missing_pack(exc: ObjectNotFound) -> RemoteIntegrityError:
    """A pack an index lists but the server does not have (as sync.restore.fetch names it)."""
    return RemoteIntegrityError("pack", exc.path.rsplit("/", 1)[-1], exc.path,
                                "listed by an index but missing (deleted or withheld)")


async def fetch_blobs(store: ChunkStore, plan: DownloadPlan
                      ) -> AsyncGenerator[tuple[bytes, BlobRef, memoryview, bytes], None]:
    """Every chunk of ``plan``, opened and checked (a stream's reads, used at once)."""
    try:
        async for item in store.fetch_blobs(plan):
            yield item
    except ObjectNotFound as exc:
        raise missing_pack(exc) from None


async def _rebuild(prov: Provisioner, vm: str, keys: crypto.KeySet, m: Manifest,
                   domain: Definition, cache: ChunkCache, progress: Progress, *,
                   adopt: bool) -> Installed:
    vm_dir = prov.vm_dir(vm)
    marker = prov.install_marker(vm)
    # (a key the agent accepted is left alone, even if this restore fails)
    pp = keys.passphrase()
    staging = prov.cfg.staging_dir
    mem_file = staging / f"{vm}.save"
    defined, adopted = "", False
    try:
        if adopt:
            prov.keys.adopt(vm, keys)
            adopted = True
            write_private(marker, b"restore started\n")  # a crash from here on is undone
        vm_dir.mkdir(parents=True, exist_ok=False)
        vm_dir.chmod(0o711)  # QEMU (libvirt's DAC label) must reach the disks
        disks = [d for d in m.disks if d.role != MEMORY]
        # every disk's blank LUKS qcow2 at once (each qemu-img create spends seconds)
        await all_of(*(blank_partial(vm_dir / domain.files[d.name], d.size, pp)
                       for d in disks))
        for disk in disks:
            await write_disk(cache, disk, keys, vm_dir / domain.files[disk.name], pp,
                             disk.size, staging, prov.cfg.staging_mib << 20, progress,
                             prov.report, blank=True)
        memory = next((d for d in m.disks if d.role == MEMORY), None)
        if memory is not None:
            # plaintext guest RAM: only where nothing persists, as the sync's memory_dir
            await asyncio.to_thread(check_ram_backed, staging, vm)
            digest = await asyncio.to_thread(write_memory, cache, memory, keys, mem_file)
            if digest != m.meta.get("memory_sha256", digest):
                raise RemoteIntegrityError("snapshot", m.object_id, str(mem_file),
                                           "the memory image does not match its SHA-256")
        progress.begin("define", 0)
        prov.report(progress)
        defined = await prov.hv.define(domain.xml, vm)
        write_private(prov.recipe_file(vm), domain.recipe_text.encode())
        if memory is not None:
            await resume_from(prov, vm, defined, mem_file, pp)
        marker.unlink(missing_ok=True)
    except BaseException:
        await undo_restore(prov, vm, defined, adopted)
        raise
    finally:
        mem_file.unlink(missing_ok=True)  # plaintext RAM
    log.info("VM %s restored from snapshot %s%s", vm, m.label,
             " (running, from its memory image)" if memory is not None else "")
    return await prov.get(vm)


async def undo_restore(prov: Provisioner, vm: str, defined: str, adopted: bool) -> None:
    """What a failed restore leaves goes: its domain (``defined``: stopped, then
    undefined), the key it adopted, its disks, its recipe and its crash marker."""
    if defined:
        with contextlib.suppress(VMClientError):
            await prov.hv.destroy(defined, vm)  # (it may run: resumed from memory)
        with contextlib.suppress(VMClientError):
            await prov.hv.undefine(defined, vm)
    if adopted:
        prov.keys.destroy(vm)
    shutil.rmtree(prov.vm_dir(vm), ignore_errors=True)
    shutil.rmtree(prov.recipe_file(vm).parent, ignore_errors=True)
    prov.install_marker(vm).unlink(missing_ok=True)


async def resume_from(prov: Provisioner, vm: str, uuid: str, mem_file: Path, pp: bytes
                       ) -> None:
    """Restore the VM from its memory image, running, with its disks' secret for the moment.

    With the definition just defined (rebuilt from the recipe), not the one the image
    carries: libvirt refuses an image whose devices differ from it (ABI check)."""
    xml = await prov.hv.xml_desc(uuid, vm)
    target = parse_domain(xml, uuid)
    secrets = list(target.secrets) if target is not None else []
    async with prov.hv.ephemeral_secrets(secrets, pp, vm):
        await restore_saved(prov.hv, str(mem_file), xml, vm)


def write_memory(cache: ChunkCache, memory: ChunkMap, keys: crypto.KeySet, dest: Path) -> str:
    """The memory image, every chunk reopened from the cache, into the RAM-backed ``dest``;
    its SHA-256."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    h = hashlib.sha256()
    try:
        for i, cid in enumerate(memory.ids):
            length = min(memory.chunk_size, memory.size - i * memory.chunk_size)
            if cid == ZERO_ID:
                data = bytes(length)
            else:
                entry = cache.get(cid)
                if entry is None:
                    raise RemoteIntegrityError("chunk", cid.hex(), str(cache.dir),
                                               "missing from the local cache")
                plain_length, sealed = entry
                try:
                    data = open_blob(keys, cid, BlobRef("cache", 0, len(sealed), plain_length),
                                     sealed, str(cache.dir))
                except RemoteIntegrityError:
                    cache.drop(cid)  # fetched again next time, as the receiver does
                    raise
            os.pwrite(fd, data, i * memory.chunk_size)
            h.update(data)
        os.ftruncate(fd, memory.size)
    finally:
        os.close(fd)
    return h.hexdigest()


__all__ = ["Prepared", "RestoreError", "download", "fetch_blobs", "prepare", "restore",
           "vm_signers", "write_memory"]
