"""The adapter to ``qemu-img`` and ``qemu-io``: LUKS-encrypted qcow2 disks.

Every disk vmclient makes is qcow2 with LUKS (``encrypt.format=luks``).  The
passphrase never appears on a command line or in a file on disk: it is written
into a pipe whose read end the tool gets as ``/dev/fd/N`` (a QEMU ``secret``
object).  The passphrase is the hex form of the VM's 256-bit LUKS key (QEMU
wants UTF-8): full entropy, so PBKDF2 stretching buys nothing and
``encrypt.iter-time`` is kept small.

Plaintext on its way into a disk (downloaded chunks) is staged only in a
RAM-backed directory and written with ``qemu-io write -s``, never as a raw file
on the laptop's disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import VMClientError
from ..virt.libvirt import PBKDF_ATTEMPTS, PBKDF_BENCH_FLAKE, pbkdf_retry_delay

ITER_TIME_MS = 10


class DiskToolError(VMClientError):
    """{} failed for {}: {}"""


_SECRET = ["--object", "secret,id=vmcsec0,file=/dev/fd/@FD@"]  # @FD@: the pipe's read end


def _opts(path: Path) -> str:
    if "," in str(path):
        raise DiskToolError("qemu-img", path, "a disk path may not contain ','")
    return f"driver=qcow2,file.filename={path},encrypt.key-secret=vmcsec0"


# qemu-img fails with PBKDF_BENCH_FLAKE now and then (its LUKS calibration);
# nothing was written: trying again is safe.


async def _run(tool: str, args: Sequence[str], passphrase: bytes, what: Path) -> str:
    for attempt in range(PBKDF_ATTEMPTS):
        try:
            return await _run_once(tool, args, passphrase, what)
        except DiskToolError as exc:
            if PBKDF_BENCH_FLAKE not in str(exc) or attempt == PBKDF_ATTEMPTS - 1:
                raise
            # the coarse CPU clock behind the flake lasts a moment: fast retries all hit it
            await asyncio.sleep(pbkdf_retry_delay(attempt))
    raise AssertionError("unreachable")


async def _run_once(tool: str, args: Sequence[str], passphrase: bytes, what: Path) -> str:
    exe = shutil.which(tool)
    if exe is None:
        raise DiskToolError(tool, what, f"{tool} is not installed")
    r, w = os.pipe()
    try:
        os.write(w, passphrase)  # 64 bytes: fits the pipe buffer
        os.close(w)
        w = -1
        proc = await asyncio.create_subprocess_exec(
            exe, *[a.replace("@FD@", str(r)) for a in args], pass_fds=(r,),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        os.close(r)
        r = -1
        out, err = await proc.communicate()
    finally:
        for fd in (r, w):
            if fd >= 0:
                os.close(fd)
    text = err.decode(errors="replace").strip()
    if proc.returncode != 0 or (tool == "qemu-io" and text):
        raise DiskToolError(tool, what, text or f"exit status {proc.returncode}")
    return out.decode(errors="replace")


async def create(path: Path, size: int, passphrase: bytes) -> None:
    """A blank encrypted qcow2 disk of ``size`` guest-visible bytes."""
    await _run("qemu-img", ["create", "-q", "-f", "qcow2", *_SECRET,
                            "-o", _create_opts(), str(path), str(size)], passphrase, path)


async def create_overlay(path: Path, size: int, passphrase: bytes, socket: Path) -> None:
    """A new encrypted qcow2 whose backing image is the raw NBD export on ``socket`` (a
    streamed restore).  The backing is not opened (``-u``): the size is given."""
    if "," in str(socket) or "?" in str(socket) or "&" in str(socket):
        raise DiskToolError("qemu-img", path, f"an NBD socket path may not contain , ? &: "
                            f"{socket}")
    await _run("qemu-img", ["create", "-q", "-f", "qcow2", *_SECRET, "-o", _create_opts(),
                            "-u", "-b", f"nbd+unix:///?socket={socket}", "-F", "raw",
                            str(path), str(size)], passphrase, path)


def _create_opts() -> str:
    return (f"encrypt.format=luks,encrypt.key-secret=vmcsec0,encrypt.iter-time={ITER_TIME_MS},"
            "cluster_size=65536")


async def convert(src: Path, src_format: str, dst: Path, passphrase: bytes) -> None:
    """Import ``src`` (qcow2 or raw, unencrypted) into a new encrypted qcow2 ``dst``.

    The source is opened as exactly ``src_format``, and a qcow2 with no backing file
    whatever its header says (``backing: null``).
    """
    if src_format not in ("qcow2", "raw"):
        raise DiskToolError("qemu-img convert", src, f"unsupported format {src_format!r}")
    node: dict[str, object] = {"driver": src_format,
                               "file": {"driver": "file", "filename": str(src)}}
    if src_format == "qcow2":
        node["backing"] = None
    await _run("qemu-img", ["convert", "-q", "-O", "qcow2", *_SECRET, "-o", _create_opts(),
                            "json:" + json.dumps(node), str(dst)], passphrase, dst)


async def resize(path: Path, size: int, passphrase: bytes) -> None:
    await _run("qemu-img", ["resize", "-q", *_SECRET, "--image-opts",
                            _opts(path), str(size)], passphrase, path)


async def info(path: Path, fmt: str = "") -> dict[str, object]:
    """``qemu-img info`` of the container (no key needed); as format ``fmt`` if given (an
    image vmclient did not make: never probed)."""
    exe = shutil.which("qemu-img") or "qemu-img"
    proc = await asyncio.create_subprocess_exec(
        exe, "info", "-U", *(["-f", fmt] if fmt else []), "--output=json", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise DiskToolError("qemu-img info", path, err.decode(errors="replace").strip())
    result: dict[str, object] = json.loads(out)
    return result


async def write_runs(path: Path, passphrase: bytes, runs: Sequence[tuple[int, bytes]],
                     staging: Path) -> None:
    """Write each ``(offset, data)`` into the guest-visible disk, in one qemu-io run.

    The data is staged in ``staging`` (tmpfs) for the duration of the call only.
    """
    if not runs:
        return
    os.makedirs(staging, mode=0o700, exist_ok=True)
    files: list[Path] = []
    try:
        commands: list[str] = []
        for offset, data in runs:
            f = staging / f"run-{secrets.token_hex(8)}"
            files.append(f)
            await asyncio.to_thread(_write_new, f, data)
            commands += ["-c", f"write -q -s {f} {offset} {len(data)}"]
        await _run("qemu-io", [*_SECRET, "--image-opts", _opts(path),
                               *commands, "-c", "flush"], passphrase, path)
    finally:
        for f in files:
            f.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


async def read(path: Path, passphrase: bytes, offset: int, length: int) -> bytes:
    """Guest-visible bytes (for checks and tests): ``qemu-io read -v`` hex dump parsed."""
    out = await _run("qemu-io", [*_SECRET, "-r", "--image-opts", _opts(path),
                                 "-c", f"read -v {offset} {length}"], passphrase, path)
    data = bytearray()
    for line in out.splitlines():
        head, sep, rest = line.partition(":  ")
        if sep and len(head) == 8 and all(c in "0123456789abcdef" for c in head):
            data += bytes.fromhex(rest[:47].replace(" ", ""))
    return bytes(data)


async def identical(path: Path, passphrase: bytes, raw: Path) -> bool:
    """True if the disk's guest-visible content equals the raw file (extra space zero)."""
    try:
        await _run("qemu-img", ["compare", "-q", *_SECRET, "--image-opts", _opts(path),
                                f"driver=raw,file.filename={raw}"], passphrase, path)
    except DiskToolError as exc:
        if "exit status 1" in str(exc):
            return False
        raise
    return True


__all__ = ["DiskToolError", "convert", "create", "create_overlay", "identical", "info", "read",
           "resize", "write_runs"]
