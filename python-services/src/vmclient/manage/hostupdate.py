"""Host updates on the laptop: fetch a bundle from the repository, hand it to RAUC.

:func:`.hostpolicy.decide` says whether an update is due and allowed now; this module
does the I/O around it (repository-format.md §8.9):

* :func:`fetch_bundle` reads the bundle like an image version (config, catalog, the
  wrapped content key, the pinned manifest, every chunk's AEAD and HMAC) into the data
  partition.  Chunks that the previous bundle or an interrupted download already
  holds at the same offset (their HMAC under the content key equals the manifest's
  id) are not downloaded again; the file is renamed into place only when whole.
* :class:`Rauc` runs Debian's/RAUC's own ``rauc`` (``install``, ``status
  --output-format=json``).  RAUC checks the bundle's signature against the keyring of
  its system configuration and writes the inactive slot; vmclient never writes a slot.
* :class:`HostUpdater` ties them together and keeps ``host-update.json`` (root-only):
  a pending ``host-update`` order, what was installed, the last result.  The agent's
  heartbeat carries :func:`status_table` to the fleet view.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import VMClientError
from ..host.files import commit, write_atomic
from ..host.lease import boot_id
from ..store import crypto, layout
from ..store.chunkstore import ChunkStore
from ..store.crypto import chunk_id
from ..store.documents import HostBundle, HostSection
from ..store.errors import StoreError
from ..store.hostformat import HOST_IMAGE, RELEASE_RE, compare
from ..store.objects import ZERO_ID
from ..store.plan import plan_download
from ..store.remote import RemoteStore
from ..store.repo import get_catalog, get_config, get_image_manifest, get_wrapped_key
from .hostpolicy import INSTALL, NONE, REFUSE, HostDecision, HostFacts, Ordered, decide

log = logging.getLogger(__name__)
RECORD = "host-update.json"
BUNDLE_SUFFIX = ".raucb"


class HostUpdateFailed(VMClientError):
    """Host update to {}: {}"""


# --- the laptop's record -----------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    ordered: Ordered | None = None
    installed: str = ""  # release installed into the other slot (restart pending)
    failed: tuple[str, ...] = ()
    result: str = ""  # the last result, one line
    slot: str = ""  # booted slot, as RAUC said at the last cycle
    running: str = ""
    boot: str = ""  # the boot id when it was installed
    catalog_serial: int = 0  # the newest catalog seen (replay protection)
    catalog_digest: str = ""
    maintenance: str = ""  # the followed channel's maintenance window, at the last look
    ordered_maintenance: str = ""  # the window of the order that installed ``installed``

    def window(self) -> str:
        """The maintenance window for the restart into ``installed`` ("" none)."""
        return self.ordered_maintenance or self.maintenance

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in vars(self).items() if k != "ordered"}
        d["failed"] = list(self.failed)
        d["ordered"] = vars(self.ordered) if self.ordered else None
        return d


def load_record(state_dir: Path) -> Record:
    """The record; one that does not parse is set aside (``.damaged``, logged) and a new
    one begun: a pending order in it is lost, the admin orders again."""
    path = state_dir / RECORD
    try:
        doc = json.loads(path.read_text())
        ordered = Ordered(**doc.pop("ordered")) if doc.get("ordered") else None
        doc.pop("ordered", None)
        return Record(ordered=ordered, **{**doc, "failed": tuple(doc.get("failed", ()))})
    except FileNotFoundError:
        return Record()
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("%s is damaged (%s): set aside as %s.damaged; starting a new record",
                    path, exc, path.name)
        path.replace(path.with_name(path.name + ".damaged"))
        return Record()


def save_record(state_dir: Path, rec: Record) -> Record:
    write_atomic(state_dir / RECORD, json.dumps(rec.to_json(), sort_keys=True).encode())
    return rec


def record_order(state_dir: Path, release: str, downgrade: bool, seq: int,
                 maintenance: str = "") -> Record:
    """A verified ``host-update`` order: it wins over the channel until done."""
    rec = load_record(state_dir)
    return save_record(state_dir, replace(rec, ordered=Ordered(release, downgrade, seq,
                                                               maintenance),
                                          failed=tuple(f for f in rec.failed if f != release)))


def status_table(state_dir: Path) -> dict[str, str] | None:
    """The heartbeat's ``host`` table (None before the first update cycle)."""
    rec = load_record(state_dir)
    if not (rec.slot or rec.result):
        return None
    return {"slot": rec.slot, "release": rec.running, "installed": rec.installed,
            "result": rec.result}


# --- RAUC ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RaucStatus:
    booted: str  # the booted slot's bootname (A/B)
    compatible: str
    primary: str
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, untrusted_json: str) -> RaucStatus:
        try:
            doc = json.loads(untrusted_json)
            slots = {name: info for entry in doc.get("slots", []) for name, info in entry.items()}
            booted = str(doc.get("booted") or "")
            return cls(booted, str(doc.get("compatible") or ""), str(doc.get("boot_primary")
                                                                       or ""), slots)
        except (ValueError, AttributeError, TypeError) as exc:
            raise HostUpdateFailed("(status)", f"rauc status printed no JSON: {exc}") from None


class Rauc:
    """The ``rauc`` command line: the laptop's only way to write a slot."""

    def __init__(self, binary: str = "rauc", conf: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.binary, self.conf, self.env = binary, conf, env

    async def _run(self, *args: str) -> tuple[int, str, str]:
        argv = [self.binary, *([f"--conf={self.conf}"] if self.conf else []), *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self.env)
        except FileNotFoundError:
            raise HostUpdateFailed("(any)", f"{self.binary} is not installed") from None
        out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def status(self) -> RaucStatus:
        rc, out, err = await self._run("status", "--output-format=json")
        if rc:
            raise HostUpdateFailed("(status)", f"rauc status failed: {_last(err)}")
        return RaucStatus.parse(out)

    async def install(self, release: str, bundle: Path) -> str:
        rc, out, err = await self._run("install", str(bundle))
        if rc:
            why = [ln.partition(":")[2].strip() for ln in (out + err).splitlines()
                   if ln.startswith("LastError:")]
            raise HostUpdateFailed(release, "rauc refused the bundle: "
                                   + (why[-1] if why else _last(err or out)))
        return _last(out) or "installed"


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# --- the download --------------------------------------------------------------------------

@dataclass
class Fetched:
    path: Path
    size: int
    downloaded: int = 0  # stored bytes read from the repository
    reused: int = 0  # chunks found locally


def bundle_path(data_dir: Path, release: str) -> Path:
    return data_dir / f"bundle-{release}{BUNDLE_SUFFIX}"


async def fetch_bundle(remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                       recipient: crypto.X25519PrivateKey, bundle: HostBundle,
                       data_dir: Path, *, seeds: tuple[Path, ...] = ()) -> Fetched:
    """Download ``bundle`` into ``data_dir``, every chunk verified; resumable.

    ``seeds`` are earlier bundles: a chunk one of them holds at the same offset is copied
    once its HMAC matches.  An interrupted download leaves ``.bundle-<release>.partial``,
    which the next call reuses the same way (nothing in it is trusted unverified).
    """
    signers = {crypto.key_id(admin): admin}
    keys = await get_wrapped_key(remote, layout.image_key(
        HOST_IMAGE, crypto.key_id(recipient.public_key())), signers, f"image:{HOST_IMAGE}",
        recipient)
    m = await get_image_manifest(remote, keys, HOST_IMAGE, bundle.image.version,
                                 bundle.image.manifest)
    (disk,) = [d for d in m.disks if d.role == "system"]
    out = bundle_path(data_dir, bundle.release)
    tmp = data_dir / f".bundle-{bundle.release}.partial"
    fetched = Fetched(out, disk.size)
    fd, missing, fetched.reused = await asyncio.to_thread(
        _prepare, tmp, disk.size, disk.chunk_size, disk.ids, keys.chunk_id, seeds)
    try:
        store = ChunkStore(remote, layout.image_store(HOST_IMAGE), keys)
        plan = plan_download(m, m.stored_ids() - set(missing), await store.load_index(),
                             store_path=store.root)
        fetched.downloaded = plan.download_bytes
        async for cid, data in store.fetch(plan):
            for off in missing.get(cid, ()):
                os.pwrite(fd, data, off)
    finally:
        os.close(fd)
    await asyncio.to_thread(commit, tmp, out)
    return fetched


def _prepare(tmp: Path, size: int, cs: int, ids: tuple[bytes, ...], id_key: bytes,
             seeds: tuple[Path, ...]) -> tuple[int, dict[bytes, list[int]], int]:
    """Open (or resume) the partial file and fill it from itself and the seeds:
    (its fd, chunk id -> offsets still missing, chunks reused)."""
    tmp.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, size)
    sources = [fd] + [os.open(p, os.O_RDONLY) for p in seeds if p.exists()]
    missing: dict[bytes, list[int]] = {}
    reused = 0
    try:
        for i, cid in enumerate(ids):
            off, length = i * cs, min(cs, size - i * cs)
            if _have(sources, id_key, cid, off, length):
                reused += 1
            elif cid == ZERO_ID:
                os.pwrite(fd, bytes(length), off)
            else:
                missing.setdefault(cid, []).append(off)
    except BaseException:
        os.close(fd)
        raise
    finally:
        for s in sources[1:]:
            os.close(s)
    return fd, missing, reused


def _have(sources: list[int], id_key: bytes, cid: bytes, off: int, length: int) -> bool:
    """Does a source hold chunk ``cid`` at ``off`` (the first is the partial file itself)?"""
    for n, fd in enumerate(sources):
        data = os.pread(fd, length, off)
        if len(data) != length:
            continue
        ok = not any(data) if cid == ZERO_ID else chunk_id(id_key, data) == cid
        if ok:
            if n:
                os.pwrite(sources[0], data, off)
            return True
    return False


# --- the cycle -----------------------------------------------------------------------------

@dataclass(frozen=True)
class HostConfig:
    state_dir: Path  # host-update.json
    data_dir: Path  # bundles, on the data partition (never a slot)
    channel: str = "stable"


class HostUpdater:
    def __init__(self, cfg: HostConfig, remote: RemoteStore, admin: crypto.Ed25519PublicKey,
                 recipient: crypto.X25519PrivateKey, device: str, rauc: Rauc,
                 running: str, boot: Callable[[], str] = boot_id) -> None:
        self.cfg, self.remote, self.admin, self.recipient = cfg, remote, admin, recipient
        self.device, self.rauc, self.running, self.boot = device, rauc, running, boot

    async def section(self) -> HostSection | None:
        rec = load_record(self.cfg.state_dir)
        cfg = await get_config(self.remote, self.admin)
        catalog, digest = await get_catalog(self.remote, self.admin, cfg.repository,
                                            known_serial=rec.catalog_serial,
                                            known_digest=rec.catalog_digest)
        ch = catalog.host.channels.get(self.cfg.channel) if catalog.host else None
        save_record(self.cfg.state_dir, replace(rec, catalog_serial=catalog.serial,
                                                catalog_digest=digest,
                                                maintenance=ch.maintenance if ch else ""))
        return catalog.host

    async def cycle(self, *, on_battery: bool, metered: bool) -> HostDecision:
        """One look: decide, and install when due and allowed."""
        if not RELEASE_RE.fullmatch(self.running):
            raise HostUpdateFailed("(any)", f"the running release {self.running!r} "
                                   "(/etc/os-release VERSION_ID) is not a release string")
        st = await self.rauc.status()
        rec = save_record(self.cfg.state_dir, self.after_restart(replace(
            load_record(self.cfg.state_dir), slot=st.booted, running=self.running)))
        section = await self.section()
        rec = load_record(self.cfg.state_dir)
        facts = HostFacts(self.device, self.cfg.channel, self.running, on_battery, metered,
                          rec.ordered, rec.installed, frozenset(rec.failed))
        d = decide(section, facts)
        log.info("host update: %s %s (%s)", d.action, d.release, d.reason)
        if d.action == NONE and d.source == "order":  # running or installed already
            save_record(self.cfg.state_dir, replace(rec, ordered=None))
        if d.action == REFUSE:
            self._done(d.release, f"refused: {d.reason}", ok=False)
        elif d.action == INSTALL and section is not None:
            bundle = section.find(d.release)
            assert bundle is not None  # decide checked it
            try:
                await self.install(bundle)
            except (HostUpdateFailed, StoreError) as exc:
                log.warning("host update to %s failed: %s", d.release, exc)
                self._done(d.release, f"failed: {exc}", ok=False)
        return d

    def after_restart(self, rec: Record) -> Record:
        """After a restart, the installed release runs, or the laptop fell back (the new
        slot did not boot to a healthy vmclient): reported, and not tried again."""
        if not rec.installed or rec.boot == self.boot():
            return rec
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        if compare(rec.installed, self.running) == 0:
            return replace(rec, installed="", boot="", ordered_maintenance="",
                           result=f"{stamp} running {self.running}")
        log.warning("host update %s did not boot: running %s in slot %s (fell back)",
                    rec.installed, self.running, rec.slot)
        return replace(rec, installed="", boot="", ordered_maintenance="",
                       failed=tuple(sorted({*rec.failed, rec.installed})),
                       result=f"{stamp} failed: {rec.installed} did not boot; fell back to "
                       f"{self.running} in slot {rec.slot}")

    async def install(self, bundle: HostBundle) -> Fetched:
        seeds = tuple(sorted(self.cfg.data_dir.glob(f"bundle-*{BUNDLE_SUFFIX}")))
        got = await fetch_bundle(self.remote, self.admin, self.recipient, bundle,
                                 self.cfg.data_dir, seeds=seeds)
        try:
            said = await self.rauc.install(bundle.release, got.path)
        except HostUpdateFailed:
            got.path.unlink(missing_ok=True)  # refused: never a seed
            raise
        for old in (*seeds, *self.cfg.data_dir.glob(".bundle-*.partial")):
            if old != got.path:
                old.unlink(missing_ok=True)  # the new bundle is the next one's seed
        self._done(bundle.release, f"installed {bundle.release} ({said}); restart to run it",
                   ok=True)
        log.info("host update %s: %d bytes downloaded, %d chunks reused", bundle.release,
                 got.downloaded, got.reused)
        return got

    def _done(self, release: str, result: str, *, ok: bool) -> None:
        rec = load_record(self.cfg.state_dir)
        mine = rec.ordered is not None and rec.ordered.release == release
        ordered = None if mine else rec.ordered
        window = rec.ordered.maintenance if mine and rec.ordered else ""
        failed = rec.failed if ok else tuple(sorted({*rec.failed, release}))
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        save_record(self.cfg.state_dir, replace(
            rec, ordered=ordered, failed=failed, installed=release if ok else rec.installed,
            ordered_maintenance=window if ok else rec.ordered_maintenance,
            boot=self.boot() if ok else rec.boot, result=f"{stamp} {result}"))
