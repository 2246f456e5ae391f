"""What IT assigned to this laptop and re-keyed for it, as the manage agent recorded it (root-only).

``<manage state_dir>/assigned.json``:

The agent records every ``assign`` order it executed (the VM, the image its
recipe installs, the order number, the outcome and its detail) and forgets the
VM on ``unassign``, all of them on ``wipe``.  vmclient-provd reads it for ``ListAssigned``
(``vmclientctl vm install`` without a recipe).  A missing or unreadable file
is an empty list: it is a view, the orders in the repository are the record.

``<manage state_dir>/rekeyed.json``: the ``rekey`` orders this device executed
(:func:`vmclient.manage.rekey.accept`), by VM: the device the VM came from and
the oldest snapshot seq a restore may take (:func:`accepted_min_seq`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import VMClientError
from ..store.format import NAME_RE
from .files import write_private

log = logging.getLogger(__name__)
FILE = "assigned.json"
REKEYED = "rekeyed.json"


@dataclass(frozen=True)
class Assigned:
    vm: str
    image: str
    order: int
    outcome: str  # done | failed
    detail: str


def load(state_dir: Path) -> list[Assigned]:
    path = state_dir / FILE
    try:
        untrusted = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s): no assigned VMs shown", path, exc)
        return []
    out = []
    for rec in untrusted if isinstance(untrusted, list) else ():
        try:
            a = Assigned(**rec)
        except TypeError:
            continue
        if NAME_RE.fullmatch(str(a.vm)) and isinstance(a.order, int) and all(
                isinstance(v, str) for v in (a.image, a.outcome, a.detail)):
            out.append(a)
    return sorted(out, key=lambda a: a.vm)


def _save(state_dir: Path, items: list[Assigned]) -> None:
    write_private(state_dir / FILE, json.dumps([asdict(a) for a in items], indent=1,
                                               sort_keys=True).encode())


def record(state_dir: Path, a: Assigned) -> None:
    _save(state_dir, [*(x for x in load(state_dir) if x.vm != a.vm), a])


def forget(state_dir: Path, vm: str) -> None:
    items = load(state_dir)
    if any(x.vm == vm for x in items):
        _save(state_dir, [x for x in items if x.vm != vm])


def clear(state_dir: Path) -> None:
    """After a wipe: no business VM is here, none is assigned until IT assigns again."""
    (state_dir / FILE).unlink(missing_ok=True)


def accepted_min_seq(manage_state_dir: Path, vm: str) -> int:
    """The oldest snapshot seq a restore of ``vm`` may take after this device executed a
    ``rekey`` order for it (what the admin verified then); 0 without such an order."""
    entry = read_rekeyed(manage_state_dir).get(vm)
    return int(str(entry["min_seq"])) if entry else 0


def read_rekeyed(manage_state_dir: Path) -> dict[str, dict[str, object]]:
    path = manage_state_dir / REKEYED
    try:
        return dict(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise VMClientError(f"{path}: unreadable: {exc}") from exc
