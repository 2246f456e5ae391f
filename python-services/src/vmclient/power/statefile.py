"""``state.json``: what vmclient-powerd holds paused or saved, and why (format: docs/dbus-api.md,
"Power manager behaviour").

Two files of one format, split by how long what they record lives:

- the state directory's (``/var/lib/vmclient/power``): the managed saves.  A saved VM
  outlives a reboot and only this file says to restore it: written durably (fsync of
  the file, then of the directory).
- the runtime directory's (``/run/vmclient/power``, a tmpfs): the pauses and guest S3.
  A paused VM dies with the host, and so does its record; the record only has to
  survive the daemon (a kill, a restart), which the page cache does.  No disk on the
  path to releasing the sleep lock: this is the file a pause writes, before its calls.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

from ..host.files import write_atomic
from .policy import Cause, Hold, HoldAction

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 1: one "cause" per VM (read, and written as 2)
NAME = "state.json"


class HoldsFile:
    """What powerd holds: saves in ``directory``, the rest in ``runtime`` (one ``state.json``
    each), every write atomic; :meth:`save` writes only the files whose part changed."""

    def __init__(self, directory: Path, runtime: Path) -> None:
        self.path = directory / NAME  # durable: managed saves
        self.runtime_path = runtime / NAME  # until the host stops: pauses, guest S3
        # What each file holds now (None: unknown, written at the next save).
        self._saved: dict[str, Hold] | None = None
        self._others: dict[str, Hold] | None = None

    def load(self) -> dict[str, Hold]:
        """Both files; a VM in both (a record moving between them when the daemon died)
        takes the durable copy (see :meth:`save`).

        Pauses found in the state directory (an older daemon kept every record there)
        are moved to the runtime directory at once, so an upgrade while the VMs are
        paused loses none of them.
        """
        saved = self._read(self.path)
        others = self._read(self.runtime_path)
        self._saved, self._others = saved, others
        held = {**others, **saved}
        moving = sorted(h.name for h in saved.values() if h.action != HoldAction.SAVE)
        if moving:
            log.info("moving the pause records of %s from %s to %s", ", ".join(moving),
                     self.path, self.runtime_path)
            try:
                self.save(held)
            except OSError as exc:
                log.error("cannot move them: %s (read again at the next start)", exc)
        return held

    def save(self, held: dict[str, Hold]) -> None:
        """Write each file whose records changed, atomically (a whole new file renamed over
        the old one).  Visible to the next daemon at once, also after a SIGKILL.

        A record that changes files (a paused VM saved at shutdown, a saved one found
        paused) is in both for a moment, never in neither: the state directory's file
        keeps it until the runtime one has it, and gets it before the runtime one
        drops it.
        """
        saved = {u: h for u, h in held.items() if h.action == HoldAction.SAVE}
        others = {u: h for u, h in held.items() if h.action != HoldAction.SAVE}
        leaving = {u: h for u, h in (self._saved or {}).items() if u in others}
        self._write_saved({**saved, **leaving})
        if others != self._others:
            write_atomic(self.runtime_path, _encode(others), durable=False)
            self._others = others
        self._write_saved(saved)

    def _write_saved(self, saved: dict[str, Hold]) -> None:
        if saved != self._saved:
            write_atomic(self.path, _encode(saved), durable=True)
            self._saved = saved

    def _read(self, path: Path) -> dict[str, Hold]:
        try:
            untrusted = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never crash on our own state: keep the broken file for inspection.
            broken = path.with_suffix(f".broken-{int(time.time())}")
            with contextlib.suppress(OSError):
                path.rename(broken)
            log.error("%s is unreadable (%s); moved to %s and starting afresh",
                      path, exc, broken)
            return {}
        if not isinstance(untrusted, dict) or untrusted.get("version") not in (1, STATE_VERSION):
            log.error("%s has an unknown format; ignoring it", path)
            return {}
        held = {}
        for item in untrusted.get("held", []):
            try:
                labels = item["causes"] if "causes" in item else [item["cause"]]
                if not isinstance(labels, list):
                    raise TypeError("causes is not a list")
                h = Hold(str(item["name"]), HoldAction.from_label(str(item["action"])),
                         frozenset(Cause.from_label(str(c)) for c in labels),
                         bool(item.get("paused", False)))
                uuid = str(item["uuid"])
            except (KeyError, TypeError, ValueError):
                log.error("%s: ignoring a malformed entry %r", path, item)
                continue
            held[uuid] = h
        return held


def _encode(held: dict[str, Hold]) -> bytes:
    return json.dumps({"version": STATE_VERSION, "held": [
        {"uuid": u, "name": h.name, "action": h.action.label, "paused": h.paused,
         "causes": sorted(c.label for c in h.causes)} for u, h in sorted(held.items())]},
        indent=1, sort_keys=True).encode()
