"""The nbdkit processes of a streamed restore (:mod:`.stream`): one per disk, each
serving the disk's export from our Python plugin (:mod:`.nbdplugin`) on a Unix socket
in the VM's ``stream/``.  Started in a session of their own, they outlive provd (the VM
reads from them); the next provd adopts them by pidfile, and stops them (SIGTERM, SIGKILL
after :data:`STOP_WAIT` s) only while their command line still names that disk's spec.
docs/sync.md, "Streamed restore", has the design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import site
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import VMClientError
from ..tasks import at_most

log = logging.getLogger(__name__)
PLUGIN = Path(__file__).with_name("nbdplugin.py")
STOP_WAIT = 10.0  # seconds an nbdkit has to end on SIGTERM before SIGKILL
READY_TIMEOUT = 60.0  # nbdkit loads the store's index before it serves


class StreamError(VMClientError):
    """Streaming VM {}: {}"""


class Nbdkits:
    """provd's nbdkits, per (VM, disk): those it started and those a former provd left."""

    def __init__(self, stream_dir: Callable[[str], Path]) -> None:
        self.stream_dir = stream_dir  # VM → its ``stream/``
        self.procs: dict[tuple[str, str], asyncio.subprocess.Process] = {}
        self.adopted: dict[tuple[str, str], int] = {}  # a former provd's nbdkits: pids

    def paths(self, vm: str, disk: str) -> tuple[Path, Path, Path]:
        """``disk``'s spec, socket and pidfile."""
        sdir = self.stream_dir(vm)
        return sdir / f"{disk}.json", sdir / f"{disk}.sock", sdir / f"{disk}.pid"

    async def serve(self, vm: str, disk: str) -> Path:
        """Start the nbdkit serving ``disk`` (again, if it died); returns its socket once
        it accepts connections."""
        spec, sock, pidfile = self.paths(vm, disk)
        pid = _serving(pidfile, spec)
        if pid:  # ours, or left running by the provd before
            if (vm, disk) not in self.procs:
                self.adopted[(vm, disk)] = pid
            return sock
        if not sock.parent.is_dir():
            raise StreamError(vm, f"{sock.parent} is gone: the VM was removed")
        old = self.procs.pop((vm, disk), None)
        if old is not None and old.returncode is None:  # not serving: stuck or dying
            with contextlib.suppress(ProcessLookupError):
                old.kill()
            await old.wait()
        exe = shutil.which("nbdkit")
        if exe is None:
            raise StreamError(vm, "nbdkit is not installed (packages nbdkit and its Python "
                              "plugin)")
        bound = sock.with_suffix(".new")  # renamed to ``sock`` once QEMU may connect
        for stale in (sock, pidfile, bound):
            stale.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(_python_path())}
        log_path = sock.with_suffix(".log")
        out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                exe, "--foreground", "--readonly", "--unix", str(bound), "--pidfile",
                str(pidfile), "python", str(PLUGIN), f"spec={spec}", env=env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True)  # it outlives a provd restart: the VM reads it
        finally:
            os.close(out)
        self.procs[(vm, disk)] = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while not pidfile.exists():
            if proc.returncode is not None or loop.time() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                tail = log_path.read_text(errors="replace")[-800:]
                raise StreamError(vm, f"nbdkit for disk {disk} did not start: {tail}")
            with contextlib.suppress(asyncio.TimeoutError):
                await at_most(proc.wait(), 0.05)
        log.info("VM %s: nbdkit serves disk %s (ready in %.1f s)", vm, disk,
                 loop.time() - deadline + READY_TIMEOUT)
        sdir_stat = sock.parent.stat()
        os.chown(bound, sdir_stat.st_uid, sdir_stat.st_gid)  # QEMU's, as its directory
        os.chmod(bound, 0o600)
        os.rename(bound, sock)
        return sock

    async def stop(self, vm: str) -> None:
        """Every nbdkit of ``vm`` ends, ours and a former provd's (SIGTERM, SIGKILL after
        :data:`STOP_WAIT` s); their pidfiles and sockets go."""
        sdir = self.stream_dir(vm)
        adopted = {pid for (name, disk), pid in self.adopted.items() if name == vm
                   and _runs(pid, self.paths(vm, disk)[0])}  # (pidfiles may be gone)
        for spec in sdir.glob("*.json") if sdir.exists() else []:
            pid = _serving(spec.with_suffix(".pid"), spec)
            if pid and (vm, spec.stem) not in self.procs:  # a former provd's
                adopted.add(pid)
        for key in [k for k in self.adopted if k[0] == vm]:
            del self.adopted[key]
        for pid in adopted:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for (name, disk), proc in list(self.procs.items()):
            if name != vm:
                continue
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await at_most(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            del self.procs[(name, disk)]
        for pid in adopted:  # not our child: its end is seen in /proc
            await _ended(pid, STOP_WAIT)
        for stale in (*sdir.glob("*.pid"), *sdir.glob("*.sock")) if sdir.exists() else []:
            stale.unlink(missing_ok=True)


def _serving(pidfile: Path, spec: Path) -> int:
    """The pid of the nbdkit serving ``spec`` per ``pidfile``, if it runs (0 if not).
    A pidfile that cannot be read for another reason than its absence (no descriptor
    left, say) raises: an nbdkit that serves the VM is not taken for dead on that."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):  # (none, or one nbdkit is still writing)
        return 0
    return pid if _runs(pid, spec) else 0


def _runs(pid: int, spec: Path) -> bool:
    """Whether process ``pid`` is an nbdkit serving ``spec`` (not another that took
    its pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):  # gone
        return False
    return f"spec={spec}".encode() in cmdline.split(b"\0")


async def _ended(pid: int, limit: float) -> None:
    """Wait until process ``pid`` (not a child) is gone; SIGKILL it after ``limit`` s."""
    loop = asyncio.get_running_loop()
    deadline, killed = loop.time() + limit, False
    while _alive(pid):
        if loop.time() > deadline:
            if killed:
                log.error("nbdkit (pid %d) does not end, even on SIGKILL", pid)
                return
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline, killed = loop.time() + limit, True
        await asyncio.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")  # a zombie has ended


def _python_path() -> list[str]:
    """What nbdkit's embedded Python needs: this vmclient and the packages it uses."""
    import vmclient

    here = str(Path(vmclient.__file__).parent.parent)
    extra = [p for p in (*site.getsitepackages(), *sys.path) if p.endswith("-packages")]
    return list(dict.fromkeys([here, *extra]))
