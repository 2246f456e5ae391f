"""Install, start, stop, upgrade and remove VMs: the provisioning service core.

Local layout (``ProvisionConfig``):

* ``<images_dir>/<vm>/system-v<N>.qcow2`` (business), ``system.qcow2``
  (private), ``<disk>.qcow2`` (user disks): LUKS qcow2, one data key per VM;
* ``<state_dir>/keys/<vm>.wrapped``: the data key, wrapped for the device key;
* ``<state_dir>/vms/<vm>/recipe.toml``: the recipe the VM was installed from.

A failed install leaves nothing behind: no domain, no disks, no key (the chunk
cache stays, so the next attempt resumes the download).  The disks' secret is
given to libvirt only for a start, as a private, ephemeral secret, and undefined
as soon as QEMU has opened the disks: :mod:`vmclient.host.gate`, the start
path every daemon shares (a business VM starts only under the lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import VMClientError, VMNotFound
from ..host.files import write_private
from ..host.gate import StartGate
from ..host.keys import DeviceKeys, VMKeys
from ..tasks import all_of
from ..virt.libvirt import DomState, Hypervisor, eject_media
from . import media, qemuimg, spec
from .config import ProvisionConfig, gate_config
from .domainxml import VM_NS, DiskBinding, domain_xml
from .mediadisk import GIB, blank_disk, from_media
from .network import network_xml
from .progress import Progress, ProgressFn, ignore
from .receiver import Receiver, Resolved

log = logging.getLogger(__name__)


class VMExists(VMClientError):
    """VM {!r} exists already ({}); remove it first"""


class ProvisionError(VMClientError):
    """VM {!r}: {}"""


@dataclass(frozen=True)
class Installed:
    name: str
    uuid: str
    kind: str
    state: str  # domains.state_word: running, starting, paused, shutoff, ...
    image: str
    image_version: int
    secret_uuid: str
    disks: dict[str, str]  # disk serial name -> path
    media: tuple[str, ...] = ()  # install media in a CD-ROM drive (ISO installs)


class Provisioner:
    def __init__(self, cfg: ProvisionConfig, hv: Hypervisor, device: DeviceKeys,
                 receiver: Receiver | None = None, report: ProgressFn = ignore) -> None:
        self.cfg, self.hv, self.receiver, self.report = cfg, hv, receiver, report
        self.keys = VMKeys(cfg.state_dir, device)
        self.gate = StartGate(hv, gate_config(cfg))
        self.networks = {z: n.network for z, n in cfg.networks.zones().items()}

    def vm_dir(self, name: str) -> Path:
        return self.cfg.images_dir / spec.vm_name(name)

    def recipe_file(self, name: str) -> Path:
        """Where the recipe of the installed (or restored) VM ``name`` is kept."""
        return self.cfg.state_dir / "vms" / spec.vm_name(name) / "recipe.toml"

    async def ensure_network(self, zone: str) -> None:
        if zone == "none":
            return
        z = self.cfg.networks.zones()[zone]
        if await self.hv.ensure_network(z.network, network_xml(z)):
            log.info("network %s defined (bridge %s, %s)", z.network, z.bridge, z.subnet)

    # -- install ------------------------------------------------------------------

    async def install(self, recipe_path: str | Path) -> Installed:
        """Install from a recipe file; a private VM's media is opened with this process's
        rights (in-process callers are root: ``vmclientctl vm --local``)."""
        recipe = spec.load(recipe_path)
        text = await asyncio.to_thread(Path(recipe_path).read_text, encoding="utf-8")
        if recipe.image.media is None:
            return await self.install_recipe(recipe, text)
        fd = media.open_for_caller(recipe.image.media)
        try:
            return await self.install_recipe(recipe, text, media_fd=fd)
        finally:
            os.close(fd)

    async def install_recipe(self, recipe: spec.Recipe, text: str, *,
                             media_fd: int | None = None) -> Installed:
        """Install a parsed recipe; ``text`` is kept for upgrades (and restores).

        A private VM's media: ``media_fd``, a file the caller opened (it stays the
        caller's to close), else the recipe's path inside the media directory
        (:mod:`.media`).  Either is copied into the VM's own directory first.
        """
        if media_fd is not None and recipe.image.media is None:
            raise ProvisionError(recipe.name, "a business VM comes from the catalog: it "
                                 "takes no install media")
        if recipe.image.media is not None and media_fd is None:
            fd = await asyncio.to_thread(media.open_in_media_dir, self.cfg.media_dir,
                                         recipe.image.media)
            try:
                return await self.install_recipe(recipe, text, media_fd=fd)
            finally:
                os.close(fd)
        return await self._install(recipe, text, media_fd)

    async def _install(self, recipe: spec.Recipe, text: str, media_fd: int | None
                       ) -> Installed:
        if media_fd is not None:
            media.check_fd(media_fd, str(recipe.image.media))
        await self.refuse_existing(recipe.name)
        progress = Progress(vm=recipe.name)
        resolved = None
        if recipe.kind == "business":
            resolved = await self._fetch(recipe.image.catalog, recipe.image.version, progress)
        await self.ensure_network(recipe.zone)
        marker = self.install_marker(recipe.name)
        _save_text(marker, "install started\n")  # a crash from here on is undone next time
        keys = self.keys.create(recipe.name)
        vm_dir = self.vm_dir(recipe.name)
        defined = ""
        try:
            vm_dir.mkdir(parents=True, exist_ok=False)
            vm_dir.chmod(0o711)  # QEMU (libvirt's DAC label) must reach the disks
            pp = keys.passphrase()
            paths = {d.name: vm_dir / f"{d.name}.qcow2" for d in recipe.disks}
            system = recipe.system_disk
            cdrom: PurePosixPath | None = None

            async def system_disk() -> None:
                nonlocal cdrom
                if resolved is not None:
                    paths[system.name] = vm_dir / \
                        f"{system.name}-v{resolved.version.version}.qcow2"
                    await self._assemble(resolved, paths[system.name], pp, system.size_gib,
                                         progress)
                else:
                    assert media_fd is not None
                    cdrom = await from_media(recipe, media_fd, paths[system.name], pp,
                                             self._copy_progress(progress), progress)
            # the blank user disks while the system disk is written (each qemu-img
            # create spends seconds calibrating its PBKDF)
            await all_of(system_disk(), *(blank_disk(paths[d.name], d.size_gib * GIB, pp)
                                          for d in recipe.disks if d.role == "user"))
            secret = str(uuidlib.uuid4())
            xml = domain_xml(recipe, uuid=str(uuidlib.uuid4()), install_media=cdrom,
                             disks={n: DiskBinding(PurePosixPath(p), secret)
                                    for n, p in paths.items()},
                             image_version=resolved.version.version if resolved else 0,
                             networks=self.networks,
                             anti_spoofing=self.cfg.networks.anti_spoofing,
                             cpu=self.cfg.cpu_profile())
            progress.begin("define", 0)
            self.report(progress)
            defined = await self.hv.define(xml, recipe.name)
            _save_text(self.recipe_file(recipe.name), text)
            marker.unlink()
        except BaseException:
            if defined:
                with contextlib.suppress(VMClientError):
                    await self.hv.undefine(defined, recipe.name)
            self.keys.destroy(recipe.name)
            shutil.rmtree(vm_dir, ignore_errors=True)
            shutil.rmtree(self.recipe_file(recipe.name).parent, ignore_errors=True)
            marker.unlink(missing_ok=True)
            raise
        log.info("VM %s installed (%s)", recipe.name, recipe.kind)
        return await self.get(recipe.name)

    def install_marker(self, name: str) -> Path:
        """The crash marker of an install or restore of ``name`` under way: while it
        exists, :meth:`refuse_existing` undoes what is there."""
        return self.cfg.state_dir / "vms" / f"{spec.vm_name(name)}.installing"

    async def refuse_existing(self, name: str) -> None:
        """Refuse a VM that exists; undo what an install that crashed left behind."""
        with contextlib.suppress(VMNotFound):
            await self.hv.lookup_name(name)
            raise VMExists(name, "a libvirt domain of that name")
        if self.install_marker(name).exists():
            log.warning("VM %s: an earlier install was interrupted; removing its remnants", name)
            self.keys.destroy(name)
            await asyncio.to_thread(shutil.rmtree, self.vm_dir(name), ignore_errors=True)
            self.install_marker(name).unlink()
        if self.keys.exists(name) or self.vm_dir(name).exists():
            raise VMExists(name, f"its key or {self.vm_dir(name)}")

    async def _fetch(self, image: str, version: int, progress: Progress) -> Resolved:
        if self.receiver is None:
            raise ProvisionError(progress.vm, "no datacenter repository is configured")
        progress.begin("catalog", 0)
        self.report(progress)
        resolved = await self.receiver.resolve(image, version)
        await self.receiver.download(resolved, progress, self.report)
        return resolved

    def _copy_progress(self, progress: Progress) -> Callable[[int], None]:
        """The progress of copying a private VM's media in (:func:`media.copy_in`, in a
        worker thread), reported from the event loop as the phase "copy"."""
        loop = asyncio.get_running_loop()

        def at(offset: int) -> None:
            progress.done = offset
            self.report(progress)

        def copied(offset: int) -> None:
            loop.call_soon_threadsafe(at, offset)
        return copied

    async def _assemble(self, r: Resolved, path: Path, pp: bytes, size_gib: int,
                        progress: Progress) -> None:
        assert self.receiver is not None
        await self.receiver.assemble(r, path, pp, size_gib * GIB, self.cfg.staging_dir,
                                     self.cfg.staging_mib << 20, progress, self.report)

    # -- inspect ------------------------------------------------------------------

    async def get(self, name: str) -> Installed:
        info = await self.hv.lookup_name(name)
        root = ET.fromstring(await self.hv.xml_desc(info.uuid, name))
        vm = root.find(f"metadata/{{{VM_NS}}}vm")
        if vm is None:
            raise VMNotFound(name)  # not a vmclient VM
        disks, secret = {}, ""
        for disk in root.iterfind("devices/disk[@device='disk']"):
            src, serial = disk.find("source"), disk.findtext("serial", "")
            if src is not None:
                disks[serial.removeprefix("vmclient-")] = src.get("file", "")
                sec = src.find("encryption/secret")
                secret = sec.get("uuid", "") if sec is not None else secret
        cdroms = tuple(s.get("file", "") for s in
                       root.iterfind("devices/disk[@device='cdrom']/source") if s.get("file"))
        return Installed(name, info.uuid, vm.get("kind", ""), info.state_word,
                         vm.get("image", ""), int(vm.get("image-version") or 0), secret, disks,
                         cdroms)

    async def list(self) -> list[Installed]:
        out = []
        for info in await self.hv.list_domains():
            with contextlib.suppress(VMNotFound):
                out.append(await self.get(info.name))
        return sorted(out, key=lambda i: i.name)

    # -- run ----------------------------------------------------------------------

    async def start(self, name: str) -> None:
        """Start (or restore) through the key gate: a business VM only under the lease.

        A VM installed from an ISO whose system disk has been installed meanwhile
        gets its install media ejected first (:meth:`installed_from_media`).
        """
        vm = await self.get(name)
        if await self.installed_from_media(vm):
            log.info("VM %s: the install finished (its system disk boots now)", name)
            await self.eject(name)
        await self.gate.start(vm.uuid, name)

    async def installed_from_media(self, vm: Installed) -> bool:
        """True if ``vm`` still has install media and its shut-off system disk is installed.

        "Installed" means its first sector carries the boot signature 55 AA, which
        every installer writes (an MBR, or GPT's protective MBR); the blank disk an
        ISO install starts from has none.
        """
        if not vm.media or vm.state != "shutoff":
            return False
        if (await self.hv.lookup_name(vm.name)).managed_save:
            return False  # it resumes as saved, drive and all; ejected at a later start
        try:  # a heuristic: it never stands in the way of the start itself
            system = spec.load(self.recipe_file(vm.name)).system_disk.name
            pp = self.keys.load(vm.name).passphrase()
            sector = await qemuimg.read(Path(vm.disks[system]), pp, 0, 512)
        except (VMClientError, KeyError) as exc:
            log.warning("VM %s: cannot tell whether its install finished (%s); its install "
                        "media stays (vmclientctl vm eject takes it out)", vm.name, exc)
            return False
        return sector[510:512] == b"\x55\xaa"

    async def eject(self, name: str) -> tuple[str, ...]:
        """Take the install media out: the CD-ROM drive leaves the definition, and if the
        VM runs its medium goes at once.  Returns the media removed."""
        vm = await self.get(name)
        removed = tuple(await eject_media(self.hv, vm.uuid, name))
        if removed:
            log.info("VM %s: install media %s ejected", name, ", ".join(removed))
        for path in map(Path, removed):
            if path.parent == self.vm_dir(name):  # provd's copy of the ISO (the user's stays)
                await asyncio.to_thread(path.unlink, missing_ok=True)
        return removed

    async def stop(self, name: str, *, force: bool = False) -> None:
        vm = await self.get(name)
        if force:
            await self.hv.destroy(vm.uuid, name)
        else:
            await self.hv.shutdown(vm.uuid, name)

    async def remove(self, name: str) -> None:
        """Stop, destroy the key (crypto-shred), delete disks, then the definition."""
        vm = await self.get(name)
        info = await self.hv.lookup_name(name)
        if info.state.active or info.state == DomState.PAUSED:
            await self.hv.destroy(vm.uuid, name)
        self.keys.destroy(name)
        shutil.rmtree(self.vm_dir(name), ignore_errors=True)
        await self.hv.undefine(vm.uuid, name)
        shutil.rmtree(self.recipe_file(name).parent, ignore_errors=True)
        self.install_marker(name).unlink(missing_ok=True)

    async def upgrade(self, name: str, version: int = 0) -> Installed:
        """A new system disk from the catalog; user disks and the data key are kept."""
        vm = await self.get(name)
        if vm.kind != "business":
            raise ProvisionError(name, "only business VMs are upgraded from the catalog")
        if vm.state not in ("shutoff", "crashed"):
            raise ProvisionError(name, f"is {vm.state}: stop it before upgrading")
        recipe = spec.load(self.recipe_file(name))
        progress = Progress(vm=name)
        resolved = await self._fetch(recipe.image.catalog, version, progress)
        new = resolved.version.version
        if new <= vm.image_version:
            raise ProvisionError(name, f"has image version {vm.image_version}; the catalog "
                                 f"offers {new}: nothing to upgrade")
        system = recipe.system_disk
        path = self.vm_dir(name) / f"{system.name}-v{new}.qcow2"
        await self._assemble(resolved, path, self.keys.load(name).passphrase(), system.size_gib,
                             progress)
        paths = {**{n: Path(p) for n, p in vm.disks.items()}, system.name: path}
        xml = domain_xml(recipe, uuid=vm.uuid, image_version=new, networks=self.networks,
                         anti_spoofing=self.cfg.networks.anti_spoofing,
                         cpu=self.cfg.cpu_profile(),
                         disks={n: DiskBinding(PurePosixPath(p), vm.secret_uuid)
                                for n, p in paths.items()})
        await self.hv.define(xml, name)
        old = Path(vm.disks[system.name])
        if old != path:
            await asyncio.to_thread(old.unlink, missing_ok=True)
        log.info("VM %s upgraded from image version %d to %d", name, vm.image_version, new)
        return await self.get(name)


def _save_text(path: Path, text: str) -> None:
    write_private(path, text.encode())
