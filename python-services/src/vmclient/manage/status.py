"""The device's heartbeat: ``devices/<id>/status``, signed by the device, replaced at every poll.

It tells IT what reports alone cannot: that the laptop reached the datacenter
even when there was no order (last contact), which release it runs, its own
view of the lease, and when its data partition's recovery key was used.  The
server can withhold or replay an older status (a stale "last contact", a use
not shown yet), not forge one.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import layout
from ..store.format import Reader, canonical_json
from .keyuse import MAX_SENT, KeyUse

OS_RELEASE = Path("/etc/os-release")
HOST_FIELDS = ("slot", "release", "installed", "result")


def status_path(device: str) -> str:
    return f"{layout.device_dir(device)}/status"


def os_release(path: Path = OS_RELEASE) -> dict[str, str]:
    """The fields of ``/etc/os-release`` (empty if it cannot be read)."""
    fields: dict[str, str] = {}
    try:
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value.strip().strip('"')
    except OSError:
        pass
    return fields


def release(os_release_path: Path = OS_RELEASE) -> str:
    """``vmclient <version>`` and the image's ``VERSION_ID``/``BUILD_ID`` where it has them."""
    try:
        version = importlib.metadata.version("vmclient")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    fields = os_release(os_release_path)
    image = " ".join(v for v in (fields.get("ID", ""), fields.get("VERSION_ID", ""),
                                 fields.get("BUILD_ID", "")) if v)
    return f"vmclient {version}" + (f" ({image})" if image else "")


@dataclass(frozen=True)
class DeviceStatus:
    device: str
    time: int  # the device's trusted time when it wrote this
    release: str
    last_order: int
    lease_until: int
    locked: bool
    wiped: bool
    # host updates (repository-format.md §8.9): slot, release, installed, result; absent
    # before the laptop's first host-update cycle
    host: dict[str, str] | None = None
    # the data partition's recovery key typed at boot (:mod:`.keyuse`), the newest
    # keyuse.MAX_SENT, oldest first; absent while it never was
    recovery_key_used: tuple[KeyUse, ...] = ()

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"version": 1, **vars(self)}
        if self.host is None:
            del doc["host"]
        if self.recovery_key_used:
            doc["recovery_key_used"] = [u.to_json() for u in self.recovery_key_used]
        else:
            del doc["recovery_key_used"]
        return canonical_json(doc)

    @classmethod
    def parse(cls, untrusted_body: bytes, device: str, path: str) -> DeviceStatus:
        r = Reader.parse(untrusted_body, "status", device, path)
        r.version({1})
        st = cls(r.const("device", device), r.integer("time", lo=0), r.text("release"),
                 r.integer("last_order", lo=0), r.integer("lease_until", lo=0),
                 r.flag("locked"), r.flag("wiped"))
        if "host" in r.names():
            h = r.table("host")
            host = {k: h.text(k) for k in HOST_FIELDS}
            h.done()
            st = cls(**{**vars(st), "host": host})
        if "recovery_key_used" in r.names():
            uses = tuple(KeyUse.read(t) for t in r.tables("recovery_key_used"))
            if not 0 < len(uses) <= MAX_SENT:
                r.fail("recovery_key_used", f"{len(uses)} entries, expected 1 to {MAX_SENT}")
            st = cls(**{**vars(st), "recovery_key_used": uses})
        r.done()
        return st
