"""What a device remembers about each VM's sync, in ``<state>/sync/<vm>.json``.

* ``seq``: the newest snapshot whose ``latest`` pointer this device wrote; a
  pointer with a lower seq is a rollback (repository-format.md §9).
* ``checkpoint``: the libvirt checkpoint taken with that snapshot's backup.
  The next sync reads only the clusters dirty since it.

and, for ``vmclient-syncd``'s schedule, in ``<state>/status.json``: the time and
snapshot of each VM's last successful sync (:func:`load_status`).

Recorded only after ``latest`` is written (§8.3 step 4); the file is replaced
atomically, so a crash leaves the previous record.  A record older than the
pointer is harmless: the dirty set since an older checkpoint is a superset.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..host.files import write_private
from ..store.errors import LocalSyncError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VMSyncState:
    seq: int = 0
    checkpoint: str = ""


def _path(state_dir: Path, vm: str) -> Path:
    return state_dir / "sync" / f"{vm}.json"


def load(state_dir: Path, vm: str) -> VMSyncState:
    try:
        doc = json.loads(_path(state_dir, vm).read_text())
        return VMSyncState(int(doc["seq"]), str(doc["checkpoint"]))
    except FileNotFoundError:
        return VMSyncState()
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalSyncError(f"{_path(state_dir, vm)}: unreadable sync state ({exc})") from exc


def save(state_dir: Path, vm: str, st: VMSyncState) -> None:
    write_private(_path(state_dir, vm), json.dumps(asdict(st)).encode())


def load_status(state_dir: Path) -> dict[str, dict[str, Any]]:
    """syncd's status of each VM (``last_sync``, ``snapshot``); an unreadable file is
    logged and ignored (the schedule then syncs at once)."""
    path = state_dir / "status.json"
    try:
        untrusted = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); starting without it", path, exc)
        return {}
    out = {}
    for vm, rec in untrusted.items() if isinstance(untrusted, dict) else ():
        if isinstance(rec, dict) and isinstance(rec.get("last_sync"), int) \
                and isinstance(rec.get("snapshot"), str):
            out[str(vm)] = {"last_sync": rec["last_sync"], "snapshot": rec["snapshot"]}
    return out


def save_status(state_dir: Path, known: dict[str, dict[str, Any]]) -> None:
    write_private(state_dir / "status.json", json.dumps(known, sort_keys=True).encode())
