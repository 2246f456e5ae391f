"""Files on the laptop that are whole or absent: one way to write, replace and destroy them.

:func:`write_atomic` is the one atomic write: a temporary file in the same
directory, written and fsync'ed, renamed over the target (or hard-linked for
exclusive creation, which fails if the name exists), then the directory
fsync'ed, so a crash leaves the old file or the new one, never a torn one.
:func:`commit` does the last three steps for a file a tool wrote (a disk
image from ``qemu-img``, a copied medium).  :func:`shred` destroys a key file
(crypto-shredding).  :func:`check_ram_backed` refuses a directory where
plaintext guest memory would persist.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..errors import VMClientError
from ..store.errors import LocalSyncError


class KeyDestructionFailed(VMClientError):
    """Key file {} is still there after shredding: {}"""


class NotRAMBacked(LocalSyncError):
    """VM {!r}: its memory would be written to {}, on {} ({}): that directory must be RAM-backed (tmpfs)"""  # noqa: E501


def write_atomic(path: Path, data: bytes, *, mode: int = 0o600, exclusive: bool = False,
                 durable: bool = True, dir_mode: int | None = 0o700,
                 temporary: str | None = None, make_parent: bool = True) -> None:
    """Write ``data`` to ``path`` whole or not at all.

    ``mode``: the file's permissions (0600: root-only, the default).
    ``exclusive``: FileExistsError if ``path`` exists (a hard link, not a rename).
    ``durable=False`` leaves out both fsyncs (a file that only matters while the
    host runs: the rename is still atomic).  ``dir_mode``: the mode a missing
    parent directory is made with (None: the umask's); ``make_parent=False``: it is not
    made (FileNotFoundError: a directory another process removes is not brought back).
    ``temporary``: the temporary file's name (default ``.tmp-<16 hex>``); it is removed
    on failure.
    """
    if make_parent:
        if dir_mode is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    tmp = path.parent / (temporary or f".tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(path.parent)


def write_private(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """A root-only file (0600 in a 0700 directory), written atomically and durably."""
    write_atomic(path, data, exclusive=exclusive)


def commit(tmp: Path, path: Path) -> None:
    """Make the finished file ``tmp`` durable and rename it to ``path`` (same directory)."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory (a rename or unlink in it is durable after this); absent is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def shred(path: Path) -> bool:
    """Overwrite, fsync, unlink, fsync the directory; True if there was a file.

    Crypto-shredding: the key is what makes the encrypted disks readable.  On
    a copy-on-write or flash file system the overwrite may not reach the old
    blocks; the unlink and a host disk encrypted underneath are what count
    there (threat-model.md §6).
    """
    if not overwrite(path, random=True):
        return False
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
    if path.exists():
        raise KeyDestructionFailed(path, "unlink did not remove it")
    return True


def overwrite(path: Path, *, random: bool = False) -> bool:
    """Overwrite a file's bytes in place (zeros, or random bytes) and fsync; False if absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size, done = os.fstat(fd).st_size, 0
        zeros = bytes(1 << 20)
        while done < size:
            n = min(1 << 20, size - done)
            done += os.pwrite(fd, os.urandom(n) if random else zeros[:n], done)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def mount_of(path: str, mounts: str) -> tuple[str, str]:
    """The mount point holding the absolute, resolved ``path`` and its file system type,
    from the text of ``/proc/self/mounts`` (("", "") if none does)."""
    best, fstype = "", ""
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ")
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return best, fstype


def check_ram_backed(directory: Path, vm: str) -> None:
    """The memory image is plaintext guest RAM: it may only go where nothing persists."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)  # libvirtd (root) writes the image; QEMU gets an fd
    with open("/proc/self/mounts") as f:
        best, fstype = mount_of(os.path.realpath(directory), f.read())
    if fstype not in ("tmpfs", "ramfs"):
        raise NotRAMBacked(vm, directory, fstype or "?", best or "?")
