"""A private VM's install media (ISO, qcow2, raw disk) taken in without trusting a path.

provd runs as root; the caller is any member of the ``vmclient`` group.  So provd
never opens a path a caller chose with its own rights:

* the media comes as a **file descriptor** the caller opened with *its* rights
  (``vmclientctl`` passes it over D-Bus, type ``h``): :func:`check_fd` accepts
  only a regular file opened for reading (not an ``O_PATH`` descriptor, whose
  re-opening through ``/proc`` would be a fresh open with root's rights);
* or it is a file inside the one configured media directory, which only root
  may write: :func:`open_in_media_dir` walks the path one component at a time
  with ``O_NOFOLLOW`` (a symbolic link anywhere is refused), never ``..``.

The bytes are then **copied** (:func:`copy_in`, sparse) into a root-owned file
in provd's own storage, and only that copy is probed and used, with an explicit
format: the caller cannot change it between the check and the use.  A disk
image with a backing file or an external data file is refused
(:func:`check_image`), and the conversion opens it with ``backing: null``
anyway; an ISO's copy is what libvirt attaches, so libvirt never opens a path
the caller chose (docs/provisioning.md, "Install media").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import VMClientError
from ..host.files import commit


class MediaError(VMClientError):
    """Install media {}: {}"""


def open_for_caller(path: str | os.PathLike[str]) -> int:
    """Open ``path`` with this process's own rights (the CLI: the calling user's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise MediaError(str(path), f"cannot open it: {exc.strerror}") from None
    try:
        check_fd(fd, str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_fd(untrusted_fd: int, what: str) -> os.stat_result:
    """A descriptor from a caller: a regular file, opened for reading."""
    try:
        flags = fcntl.fcntl(untrusted_fd, fcntl.F_GETFL)
        st = os.fstat(untrusted_fd)
    except OSError as exc:
        raise MediaError(what, f"not an open file: {exc.strerror}") from None
    if flags & getattr(os, "O_PATH", 0) or (flags & os.O_ACCMODE) not in (os.O_RDONLY,
                                                                          os.O_RDWR):
        raise MediaError(what, "not opened for reading (pass a file opened for reading)")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(what, "not a regular file")
    return st


def open_in_media_dir(media_dir: Path, untrusted_path: PurePosixPath) -> int:
    """The file ``untrusted_path`` names inside ``media_dir``; no symbolic link, no ``..``.

    ``media_dir`` itself must be a directory owned by root that nobody else may
    write (else anyone could put a link or a hard link there).
    """
    what = str(untrusted_path)
    base = PurePosixPath(media_dir)
    if not untrusted_path.is_absolute() or ".." in untrusted_path.parts \
            or not untrusted_path.is_relative_to(base) or untrusted_path == base:
        raise MediaError(what, f"a recipe may name media only inside {media_dir} (give the "
                         "file to `vmclientctl vm install`, which opens it with your rights)")
    try:
        fd = os.open(media_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise MediaError(what, f"cannot open the media directory {media_dir}: "
                         f"{exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise MediaError(what, f"the media directory {media_dir} must be owned by root "
                             "and writable by nobody else")
        parts = untrusted_path.relative_to(base).parts
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | \
                (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                problem = "is a symbolic link (refused)" if exc.errno in (
                    errno.ELOOP, errno.ENOTDIR) else exc.strerror
                raise MediaError(what, f"{'/'.join(parts[:i + 1])}: {problem}") from None
            os.close(fd)
            fd = nxt
        check_fd(fd, what)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


PROGRESS_STEP = 16 << 20  # bytes copied between two progress calls of copy_in


def copy_in(src_fd: int, dest: Path, what: str,
            progress: Callable[[int], None] | None = None) -> int:
    """Copy the file behind ``src_fd`` into a new root-only ``dest`` (holes kept); its size.

    ``dest`` appears whole or not at all (written as ``.partial-<name>``, renamed).
    ``progress(offset)``: how far the copy is, at most :data:`PROGRESS_STEP` bytes apart
    and once at the end (a hole skipped counts as copied); called in the copying thread.
    """
    size = check_fd(src_fd, what).st_size
    tmp = dest.with_name(f".partial-{dest.name}")
    out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _copy_extents(src_fd, out, size, progress or (lambda _n: None))
        except OSError as exc:
            raise MediaError(what, f"reading it failed: {exc.strerror}") from None
        os.ftruncate(out, size)
        commit(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        os.close(out)
    if progress is not None:
        progress(size)
    return size


def _copy_extents(src: int, dst: int, size: int, progress: Callable[[int], None]) -> None:
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                return
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        off = start
        while off < end:
            n = _copy_range(src, dst, off, min(end - off, PROGRESS_STEP))
            if n == 0:  # the file shrank meanwhile
                return
            off += n
            progress(off)
        pos = end


def _copy_range(src: int, dst: int, off: int, count: int) -> int:
    try:
        return os.copy_file_range(src, dst, count, off, off)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    data = os.pread(src, min(count, 8 << 20), off)
    if data:
        os.pwrite(dst, data, off)
    return len(data)


def check_image(info: dict[str, object], fmt: str, what: str) -> int:
    """``qemu-img info`` of a disk image to import: no backing file, no external data file,
    not encrypted, the format it was opened as.  Returns its virtual size."""
    data = info.get("format-specific")
    specific = data.get("data", {}) if isinstance(data, dict) else {}
    if info.get("format") != fmt:
        raise MediaError(what, f"not a {fmt} image")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise MediaError(what, f"has a backing file ({info.get('backing-filename')}): "
                         "images with a backing file are refused (qemu-img convert it into "
                         "one stand-alone image first)")
    if isinstance(specific, dict) and specific.get("data-file"):
        raise MediaError(what, "has an external data file: refused")
    if info.get("encrypted"):
        raise MediaError(what, "is encrypted: give an unencrypted image")
    size = info.get("virtual-size", 0)
    return int(size) if isinstance(size, int) else 0


__all__ = ["MediaError", "check_fd", "check_image", "copy_in", "open_for_caller",
           "open_in_media_dir"]
