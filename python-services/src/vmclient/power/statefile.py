"""``state.json``: what vmclient-powerd holds paused or saved, and why (format: docs/dbus-api.md,
"Power manager behaviour")."""

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


class HoldsFile:
    """``state.json`` in the state directory, written atomically and fsynced."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "state.json"

    def load(self) -> dict[str, Hold]:
        try:
            untrusted = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Never crash on our own state: keep the broken file for inspection.
            broken = self.path.with_suffix(f".broken-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.rename(broken)
            log.error("%s is unreadable (%s); moved to %s and starting afresh",
                      self.path, exc, broken)
            return {}
        if not isinstance(untrusted, dict) or untrusted.get("version") not in (1, STATE_VERSION):
            log.error("%s has an unknown format; ignoring it", self.path)
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
                log.error("%s: ignoring a malformed entry %r", self.path, item)
                continue
            held[uuid] = h
        return held

    def save(self, held: dict[str, Hold]) -> None:
        """Replace the file atomically (a whole new file renamed over the old one).

        Visible to the next daemon at once, also after a SIGKILL (the page cache holds
        it).  fsynced (file, then directory) only while it holds a managed save: a
        saved VM outlives a host crash and only this file says to restore it, while a
        paused VM dies with the host (its entry would be forgotten at the next start
        anyway), and an fsync costs more than the pause itself (milliseconds to tens
        of them, on the path to releasing the sleep lock).
        """
        durable = any(h.action == HoldAction.SAVE for h in held.values())
        data = json.dumps({"version": STATE_VERSION, "held": [
            {"uuid": u, "name": h.name, "action": h.action.label, "paused": h.paused,
             "causes": sorted(c.label for c in h.causes)} for u, h in sorted(held.items())]},
            indent=1, sort_keys=True)
        write_atomic(self.path, data.encode(), durable=durable)
