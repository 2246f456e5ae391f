"""Where the shell keeps a first start across its restarts (the adapter of
:func:`.firststart.saved_text`): ``$XDG_STATE_HOME/vmclient-shell/first-start.json``
of the seat's user, written whole (a temporary file renamed over it).  It holds
the step and the layout, never a password or the code.

Beside it, ``keyboard.env`` (:func:`.firststart.keyboard_text`): the layout chosen,
which weston.service's drop-in gives Weston when the session starts (the seat
user's home is on the data partition; the host's /etc is read-only)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gi

from . import firststart as fs

gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

log = logging.getLogger(__name__)


def directory() -> Path:
    return Path(GLib.get_user_state_dir()) / "vmclient-shell"


def path() -> Path:
    return directory() / "first-start.json"


def keyboard_path() -> Path:
    return directory() / "keyboard.env"


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


def _write(p: Path, text: str) -> None:
    """``text`` into ``p``, whole (a temporary file renamed over it)."""
    tmp = p.with_suffix(".tmp")
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp.write_text(text)
    os.replace(tmp, p)


def save(first: fs.FirstStart) -> None:
    p = path()
    try:
        _write(p, fs.saved_text(first))
    except OSError as exc:
        log.warning("cannot save the first start's progress in %s: %s", p, exc)


def save_keyboard(layout: str) -> str | None:
    """Keep ``layout`` for the next session's Weston; None, or why it is not kept."""
    p = keyboard_path()
    try:
        _write(p, fs.keyboard_text(layout))
    except OSError as exc:
        log.warning("cannot keep the keyboard layout in %s: %s", p, exc)
        return f"cannot write {p}: {exc.strerror or exc}"
    return None
