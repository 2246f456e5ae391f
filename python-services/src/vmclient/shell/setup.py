"""The first start's calls, through Gio: vmclient-syncd's ``Enrol`` and
``SetPassword`` (``org.vmclient.VMClient1.Management``, polkit: the seat's active
session).  Each answers ``done(error_text_or_None)``.  (The keyboard layout is the
shell's own to keep: :func:`.firstsave.save_keyboard`.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

ENROL_TIMEOUT_MS = 120_000  # the request goes to the datacenter


def _message(err: GLib.Error) -> str:
    """The remote error's text, without GDBus's "GDBus.Error:<name>: " in front."""
    text = str(err.message)
    if text.startswith("GDBus.Error:") and ": " in text:
        text = text.split(": ", 1)[1]
    return text


def _call(conn: Any, target: tuple[str, str, str], member: str, args: Any,
          done: Callable[[str | None, str | None], None], timeout_ms: int = 30_000) -> None:
    """``done(error text, error name)``, both None on success."""
    def finish(c: Any, res: Any) -> None:
        try:
            c.call_finish(res)
        except GLib.Error as err:
            done(_message(err), Gio.DBusError.get_remote_error(err))
            return
        done(None, None)
    conn.call(*target, member, args, None, Gio.DBusCallFlags.NONE, timeout_ms, None, finish)


MANAGEMENT = (names.SYNC_BUS_NAME, names.MANAGE_PATH, names.MANAGE_IFACE)


def enrol(conn: Any, code: str, done: Callable[[str | None], None]) -> None:
    _call(conn, MANAGEMENT, "Enrol", GLib.Variant("(s)", (code,)),
          lambda error, _name: done(error), ENROL_TIMEOUT_MS)


def set_password(conn: Any, password: str, done: Callable[[str | None, str | None], None]
                 ) -> None:
    """``done(error text, error name)``: the name tells a password set already
    (:data:`.firststart.PASSWORD_SET_ALREADY`) from the rest."""
    _call(conn, MANAGEMENT, "SetPassword", GLib.Variant("(s)", (password,)), done)
