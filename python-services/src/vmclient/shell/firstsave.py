"""Where the shell keeps a first start across its restarts (the adapter of
:func:`.firststart.saved_text`): ``$XDG_STATE_HOME/vmclient-shell/first-start.json``
of the seat's user, written whole (a temporary file renamed over it).  It holds
the step and the layout, never a password or the code."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gi

from . import firststart as fs

gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

log = logging.getLogger(__name__)


def path() -> Path:
    return Path(GLib.get_user_state_dir()) / "vmclient-shell" / "first-start.json"


def load() -> fs.FirstStart | None:
    p = path()
    try:
        untrusted_text = p.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read %s (the first start opens as if new): %s", p, exc)
        return None
    saved = fs.parse_saved(untrusted_text)
    if saved is None:
        log.warning("%s is not a first start the shell saved: ignored", p)
    return saved


def save(first: fs.FirstStart) -> None:
    p = path()
    tmp = p.with_suffix(".tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(fs.saved_text(first))
        os.replace(tmp, p)
    except OSError as exc:
        log.warning("cannot save the first start's progress in %s: %s", p, exc)
