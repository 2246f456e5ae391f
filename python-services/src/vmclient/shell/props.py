"""A daemon's properties (powerd's ``Power``, syncd's ``Sync``), followed through Gio
for the status bar: read at once and whenever the daemon (re)appears on the bus,
then kept current from ``PropertiesChanged``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

log = logging.getLogger(__name__)

PROPERTIES = "org.freedesktop.DBus.Properties"


class PropsWatch:
    """Calls ``on_change(props)`` with every property of the object ({} while its daemon
    is not on the bus)."""

    def __init__(self, conn: Any, bus_name: str, path: str, iface: str,
                 on_change: Callable[[dict[str, Any]], None]) -> None:
        self.conn, self.on_change = conn, on_change
        self.bus_name, self.path, self.iface = bus_name, path, iface
        self.props: dict[str, Any] = {}
        self._sub: int | None = None
        self._watch: int | None = None

    def start(self) -> None:
        self._sub = self.conn.signal_subscribe(
            self.bus_name, PROPERTIES, "PropertiesChanged", self.path,
            self.iface, Gio.DBusSignalFlags.NONE, self._changed)
        self._watch = Gio.bus_watch_name_on_connection(
            self.conn, self.bus_name, Gio.BusNameWatcherFlags.NONE,
            lambda *_a: self._fetch(), lambda *_a: self._set({}))

    def stop(self) -> None:
        if self._sub is not None:
            self.conn.signal_unsubscribe(self._sub)
            self._sub = None
        if self._watch is not None:
            Gio.bus_unwatch_name(self._watch)
            self._watch = None

    def _fetch(self) -> None:
        def done(c: Any, res: Any) -> None:
            try:
                (props,) = c.call_finish(res).unpack()
            except GLib.Error as err:
                log.warning("cannot read the properties of %s: %s", self.iface, err.message)
                return
            self._set(dict(props))
        self.conn.call(self.bus_name, self.path, PROPERTIES, "GetAll",
                       GLib.Variant("(s)", (self.iface,)),
                       GLib.VariantType.new("(a{sv})"), Gio.DBusCallFlags.NONE, 10_000, None,
                       done)

    def _changed(self, _conn: Any, _sender: Any, _path: Any, _iface: Any, _signal: Any,
                 params: Any) -> None:
        _iface_name, changed, _invalidated = params.unpack()
        self._set({**self.props, **dict(changed)})

    def _set(self, props: dict[str, Any]) -> None:
        self.props = props
        self.on_change(props)
