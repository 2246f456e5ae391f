"""What a device remembers about each VM's sync, in ``<state>/sync/<vm>.json``.

* ``seq``: the newest snapshot whose ``latest`` pointer this device wrote; a
  pointer with a lower seq is a rollback (repository-format.md §9).
* ``checkpoint``: the libvirt checkpoint taken with that snapshot's backup.
  The next sync reads only the clusters dirty since it.

Recorded only after ``latest`` is written (§8.3 step 4); the file is replaced
atomically, so a crash leaves the previous record.  A record older than the
pointer is harmless: the dirty set since an older checkpoint is a superset.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..host.files import write_private
from ..store.errors import LocalSyncError


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
