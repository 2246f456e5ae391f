"""Wi-Fi through NetworkManager's D-Bus API (org.freedesktop.NetworkManager), for the bar.

The shell reads the first Wi-Fi device (``DeviceType`` 2), its access points and
the active connection's access point, and connects with
``AddAndActivateConnection`` (NetworkManager keeps the connection, so the
laptop reconnects by itself later).  Reading is asynchronous on the GLib loop;
the words and the list order are pure functions (:func:`text`, :func:`networks`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import gi

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

log = logging.getLogger(__name__)

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
DEVICE = NM + ".Device"
WIRELESS = NM + ".Device.Wireless"
AP = NM + ".AccessPoint"
ACTIVE = NM + ".Connection.Active"
PROPS = "org.freedesktop.DBus.Properties"
DEVICE_TYPE_WIFI = 2
TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Network:
    ssid: str
    strength: int  # percent
    secured: bool
    path: str  # the access point's object path


@dataclass(frozen=True)
class WifiState:
    device: str | None = None  # None: no Wi-Fi device (or no NetworkManager)
    networks: tuple[Network, ...] = ()
    connected: Network | None = None


def ssid_of(untrusted_ssid: Any) -> str:
    """An SSID (bytes, not necessarily UTF-8) as text a label can show."""
    return bytes(untrusted_ssid).decode("utf-8", "replace").replace("\n", " ")[:32]


def networks(aps: Iterable[Network]) -> tuple[Network, ...]:
    """One entry per SSID (its strongest access point), strongest first, then by name;
    hidden networks (no SSID) left out."""
    best: dict[str, Network] = {}
    for ap in aps:
        if ap.ssid and (ap.ssid not in best or ap.strength > best[ap.ssid].strength):
            best[ap.ssid] = ap
    return tuple(sorted(best.values(), key=lambda n: (-n.strength, n.ssid)))


def text(state: WifiState) -> str:
    """The bar's Wi-Fi field: "Wi-Fi office 72%", "Wi-Fi: not connected", "" (no Wi-Fi)."""
    if state.device is None:
        return ""
    if state.connected is None:
        return "Wi-Fi: not connected"
    return f"Wi-Fi {state.connected.ssid} {state.connected.strength}%"


def connection_settings(network: Network, password: str) -> dict[str, dict[str, Any]]:
    """AddAndActivateConnection's settings: NetworkManager fills in the rest from the AP."""
    if not network.secured:
        return {}
    return {"802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": password}}


class Wifi:
    """Reads NetworkManager's Wi-Fi state; ``on_state(WifiState)`` after each refresh."""

    def __init__(self, conn: Any, on_state: Callable[[WifiState], None]) -> None:
        self.conn, self.on_state = conn, on_state
        self.state = WifiState()

    def _call(self, path: str, iface: str, method: str, args: Any, reply: str,
              done: Callable[[Any], None]) -> None:
        def finish(c: Any, res: Any) -> None:
            try:
                done(c.call_finish(res).unpack())
            except GLib.Error as err:
                log.debug("NetworkManager %s.%s: %s", iface, method, err.message)
                done(None)
        self.conn.call(NM, path, iface, method, args, GLib.VariantType.new(reply),
                       Gio.DBusCallFlags.NONE, TIMEOUT_MS, None, finish)

    def _get_all(self, path: str, iface: str, done: Callable[[dict[str, Any]], None]) -> None:
        self._call(path, PROPS, "GetAll", GLib.Variant("(s)", (iface,)), "(a{sv})",
                   lambda r: done(r[0] if r else {}))

    def _get_many(self, paths: list[str], iface: str,
                  done: Callable[[list[tuple[str, dict[str, Any]]]], None]) -> None:
        """GetAll of every object in ``paths``; ``done`` with them all, in order."""
        results: dict[str, dict[str, Any]] = {}
        if not paths:
            done([])

        def one(path: str, props: dict[str, Any]) -> None:
            results[path] = props
            if len(results) == len(paths):
                done([(p, results[p]) for p in paths])
        for path in paths:
            self._get_all(path, iface, functools.partial(one, path))

    def refresh(self) -> None:
        self._call(NM_PATH, NM, "GetDevices", None, "(ao)", self._devices)

    def _devices(self, reply: Any) -> None:
        def got(devices: list[tuple[str, dict[str, Any]]]) -> None:
            device = next(((p, props) for p, props in devices
                           if props.get("DeviceType") == DEVICE_TYPE_WIFI), None)
            if device is None:
                self._publish(WifiState())
            else:
                self._device(*device)
        self._get_many([str(p) for p in reply[0]] if reply else [], DEVICE, got)

    def _device(self, path: str, props: dict[str, Any]) -> None:
        active = str(props.get("ActiveConnection", "/"))

        def got(aps: list[tuple[str, dict[str, Any]]]) -> None:
            found = tuple(Network(
                ssid_of(p.get("Ssid", b"")), max(0, min(100, int(p.get("Strength", 0)))),
                bool(int(p.get("Flags", 0)) & 1 or int(p.get("RsnFlags", 0))
                     or int(p.get("WpaFlags", 0))), ap) for ap, p in aps if p)
            self._active(path, active, found)
        self._call(path, WIRELESS, "GetAllAccessPoints", None, "(ao)",
                   lambda r: self._get_many([str(p) for p in r[0]] if r else [], AP, got))

    def _active(self, device: str, active: str, found: tuple[Network, ...]) -> None:
        if active in ("", "/"):
            self._publish(WifiState(device, networks(found), None))
            return

        def got(props: dict[str, Any]) -> None:
            ap = str(props.get("SpecificObject", "/"))
            current = next((n for n in found if n.path == ap), None)
            self._publish(WifiState(device, networks(found), current))
        self._get_all(active, ACTIVE, got)

    def _publish(self, state: WifiState) -> None:
        self.state = state
        self.on_state(state)

    def connect(self, ssid: str, password: str, done: Callable[[str | None], None]) -> None:
        """Connect to ``ssid`` (one of the networks listed); ``done(error or None)``."""
        network = next((n for n in self.state.networks if n.ssid == ssid), None)
        if network is None or self.state.device is None:
            done(f"no Wi-Fi network {ssid!r} in range")
            return
        settings = {group: {k: GLib.Variant("s", v) for k, v in values.items()}
                    for group, values in connection_settings(network, password).items()}

        def finish(c: Any, res: Any) -> None:
            try:
                c.call_finish(res)
            except GLib.Error as err:
                done(f"cannot connect to {ssid}: {err.message}")
                return
            done(None)
            self.refresh()
        self.conn.call(NM, NM_PATH, NM, "AddAndActivateConnection",
                       GLib.Variant("(a{sa{sv}}oo)", (settings, self.state.device, network.path)),
                       GLib.VariantType.new("(oo)"), Gio.DBusCallFlags.NONE, TIMEOUT_MS * 6,
                       None, finish)
