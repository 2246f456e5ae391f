"""Repository locks: the lock document and who may break a lock (pure but for the process table).

:class:`~vmclient.store.remote.LockingMixin` takes, breaks and releases locks
by compare-and-delete with these; :mod:`.holding` keeps a held one fresh and
releases it.  Format and rules: repository-format.md §5 ("Lock") and §10.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass

BOOT_ID = "/proc/sys/kernel/random/boot_id"
MACHINE_ID = "/etc/machine-id"


def _read_first_line(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.readline().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Whoami:
    """What identifies a lock's holder process: host (name and machine id), boot, pid."""

    host: str
    machine: str
    boot: str
    pid: int

    @classmethod
    def current(cls) -> Whoami:
        return cls(socket.gethostname(), _read_first_line(MACHINE_ID),
                   _read_first_line(BOOT_ID), os.getpid())


@dataclass(frozen=True)
class LockInfo:
    """A lock document as read (untrusted: advisory, anyone could have written it)."""

    holder: str
    created: int
    refreshed: int
    nonce: str
    host: str = ""
    machine: str = ""
    boot: str = ""
    pid: int = 0


def lock_document(holder: str, now: int, nonce: str, *, created: int | None = None,
                  me: Whoami | None = None) -> bytes:
    """The lock's JSON; ``created`` is kept by a refresh (``now`` is then its time)."""
    me = me or Whoami.current()
    return json.dumps({"holder": holder, "created": now if created is None else created,
                       "refreshed": now, "nonce": nonce, "host": me.host,
                       "machine": me.machine, "boot": me.boot, "pid": me.pid}).encode()


def read_lock(untrusted: bytes) -> LockInfo | None:
    """The lock document, or None if it is not one (counts as stale)."""
    try:
        doc = json.loads(untrusted)
        created = int(doc["created"])
        return LockInfo(str(doc["holder"]), created, int(doc.get("refreshed", created)),
                        str(doc.get("nonce", "")), str(doc.get("host", "")),
                        str(doc.get("machine", "")), str(doc.get("boot", "")),
                        int(doc.get("pid", 0)))
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError):
        return None  # (OverflowError: "created": 1e999; RecursionError: nesting)


def stale_reason(info: LockInfo | None, now: int, stale_after: int, me: Whoami,
                 held: Collection[str], alive: Callable[[int], bool]) -> str | None:
    """Why the lock may be broken, or None if it is held.

    Besides age (``stale_after`` since its last refresh): a lock this host
    wrote in an earlier boot (its process is gone whatever its pid is now), or
    in this boot by a process that is gone, or by this very process without
    holding it now (an unlock lost with the connection).  "This host" is the
    host name *and* the machine id, so two machines of one name never judge
    each other's locks by their own boot and pids.
    """
    if info is None:
        return "not a lock document"
    age = now - max(info.created, info.refreshed)
    if age >= stale_after:
        return f"not refreshed for {age} s (stale after {stale_after} s)"
    if not (info.host == me.host and info.machine == me.machine and info.machine
            and info.boot and me.boot):
        return None
    if info.boot != me.boot:
        return f"left by {info.holder} before this host rebooted"
    if info.pid == me.pid:
        return None if info.nonce in held else "left by this process, which no longer holds it"
    if info.pid > 0 and not alive(info.pid):
        return f"its process {info.pid} is gone"
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HELD: set[str] = set()  # nonces of the locks this process holds right now
