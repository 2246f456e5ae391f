"""The first start's calls, through Gio: vmclient-syncd's ``Enrol`` and
``SetPassword`` (``org.vmclient.VMClient1.Management``, polkit: the seat's active
session) and systemd-localed's ``SetX11Keyboard`` (the system's keyboard layout:
``/etc/vconsole.conf``'s ``XKBLAYOUT`` and ``/etc/X11/xorg.conf.d/00-keyboard.conf``).
Each answers ``done(error_text_or_None)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

LOCALED = ("org.freedesktop.locale1", "/org/freedesktop/locale1", "org.freedesktop.locale1")
ENROL_TIMEOUT_MS = 120_000  # the request goes to the datacenter


def _message(err: GLib.Error) -> str:
    """The remote error's text, without GDBus's "GDBus.Error:<name>: " in front."""
    text = str(err.message)
    if text.startswith("GDBus.Error:") and ": " in text:
        text = text.split(": ", 1)[1]
    return text


def _call(conn: Any, target: tuple[str, str, str], member: str, args: Any,
          done: Callable[[str | None], None], timeout_ms: int = 30_000) -> None:
    def finish(c: Any, res: Any) -> None:
        try:
            c.call_finish(res)
        except GLib.Error as err:
            done(_message(err))
            return
        done(None)
    conn.call(*target, member, args, None, Gio.DBusCallFlags.NONE, timeout_ms, None, finish)


MANAGEMENT = (names.SYNC_BUS_NAME, names.MANAGE_PATH, names.MANAGE_IFACE)


def enrol(conn: Any, code: str, done: Callable[[str | None], None]) -> None:
    _call(conn, MANAGEMENT, "Enrol", GLib.Variant("(s)", (code,)), done, ENROL_TIMEOUT_MS)


def set_password(conn: Any, password: str, done: Callable[[str | None], None]) -> None:
    _call(conn, MANAGEMENT, "SetPassword", GLib.Variant("(s)", (password,)), done)


def set_keyboard(conn: Any, layout: str, done: Callable[[str | None], None]) -> None:
    """localed's ``SetX11Keyboard(layout, model, variant, options, convert, interactive)``:
    ``convert`` also sets the console's keymap; not interactive (polkit answers at
    once: the image's rule grants it to the seat's active session)."""
    _call(conn, LOCALED, "SetX11Keyboard",
          GLib.Variant("(ssssbb)", (layout, "", "", "", True, False)), done)
