"""A new VM's disks as provd makes them: blank encrypted qcow2s, and a private VM's system
disk from its media (an ISO copied in beside a blank disk, or a disk image imported:
checked, converted into a new encrypted qcow2).  Each is written under a temporary name
and committed (:func:`..host.files.commit`): no half-made disk under its real name."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..host.files import commit
from . import media, qemuimg, spec
from .progress import Progress

GIB = 1 << 30
INSTALL_ISO = "install.iso"  # the copy of an ISO install's media, in the VM's directory


async def blank_disk(path: Path, size: int, pp: bytes) -> None:
    tmp = path.with_name(f".partial-{path.name}")
    await qemuimg.create(tmp, size, pp)
    await asyncio.to_thread(commit, tmp, path)


async def from_media(recipe: spec.Recipe, fd: int, system: Path, pp: bytes,
                     copied: Callable[[int], None], progress: Progress) -> PurePosixPath | None:
    """A private VM's system disk from its media; the copy of an ISO to attach, if any.
    The copy in is the phase "copy" of ``progress``, ``copied(offset)`` its progress."""
    what = str(recipe.image.media)
    progress.begin("copy", os.fstat(fd).st_size)
    copied(0)
    if recipe.image.iso is None:
        await _import(fd, recipe.image.source, what, system, pp, recipe.system_disk.size_gib,
                      copied)
        return None
    cdrom = system.parent / INSTALL_ISO  # provd's own copy: what libvirt opens
    await asyncio.to_thread(media.copy_in, fd, cdrom, what, copied)
    await blank_disk(system, recipe.system_disk.size_gib * GIB, pp)
    return PurePosixPath(cdrom)


async def _import(src_fd: int, fmt: str, what: str, dst: Path, pp: bytes,
                  size_gib: int, copied: Callable[[int], None]) -> None:
    """A private VM's existing disk, copied into provd's storage, checked, converted into a
    new encrypted qcow2 (:mod:`.media`)."""
    copy = dst.with_name(f".import-{dst.name}")
    tmp = dst.with_name(f".partial-{dst.name}")
    try:
        await asyncio.to_thread(media.copy_in, src_fd, copy, what, copied)
        virtual = media.check_image(await qemuimg.info(copy, fmt), fmt, what)
        await qemuimg.convert(copy, fmt, tmp, pp)
        if size_gib * GIB > virtual:
            await qemuimg.resize(tmp, size_gib * GIB, pp)
        await asyncio.to_thread(commit, tmp, dst)
    except qemuimg.DiskToolError as exc:
        raise media.MediaError(what, f"cannot import it as {fmt}: {exc}") from None
    finally:
        copy.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
