"""Adapters: the facts :mod:`.policy` decides on, read from UPower, NetworkManager, logind.

Each peer is optional: a peer not on the bus says nothing (UPower absent: on
AC; NetworkManager absent: the routing table and ``metered_interfaces``).
Values are read fresh at each decision, so no signal can be missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType
from dbus_fast.errors import DBusError

from ..dbus import names
from ..errors import ServiceUnavailable
from ..power.logind import Inhibitor, Logind
from . import policy

log = logging.getLogger(__name__)

UPOWER_BUS = "org.freedesktop.UPower"
UPOWER_PATH = "/org/freedesktop/UPower"
UPOWER_DISPLAY = "/org/freedesktop/UPower/devices/DisplayDevice"
UPOWER_DEVICE_IFACE = "org.freedesktop.UPower.Device"
NM_BUS = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
PROPS = "org.freedesktop.DBus.Properties"
WHO = "vmclient-syncd"


async def get_property(bus: MessageBus, dest: str, path: str, iface: str, name: str) -> Any:
    """A peer's property, or None when the peer (or the property) is not there."""
    reply = await bus.call(Message(destination=dest, path=path, interface=PROPS, member="Get",
                                   signature="ss", body=[iface, name]))
    if reply is None or reply.message_type == MessageType.ERROR:
        return None
    value = reply.body[0]
    return value.value if isinstance(value, Variant) else value


async def has_owner(bus: MessageBus, name: str) -> bool:
    reply = await bus.call(Message(destination=names.DBUS_BUS, path=names.DBUS_PATH,
                                   interface=names.DBUS_IFACE, member="NameHasOwner",
                                   signature="s", body=[name]))
    return bool(reply is not None and reply.message_type != MessageType.ERROR and reply.body[0])


class Sensors:
    """Battery and network, as UPower and NetworkManager (or the kernel) tell them."""

    def __init__(self, bus: MessageBus, metered_interfaces: tuple[str, ...],
                 route_table: Path = Path("/proc/net/route")) -> None:
        self.bus, self.metered_interfaces, self.route_table = bus, metered_interfaces, route_table

    async def battery(self) -> tuple[bool, float | None]:
        """(on battery, display device percentage or None)."""
        if not await has_owner(self.bus, UPOWER_BUS):
            return False, None
        on_battery = await get_property(self.bus, UPOWER_BUS, UPOWER_PATH, UPOWER_BUS,
                                        "OnBattery")
        pct = await get_property(self.bus, UPOWER_BUS, UPOWER_DISPLAY, UPOWER_DEVICE_IFACE,
                                 "Percentage")
        return bool(on_battery), (float(pct) if isinstance(pct, (int, float)) else None)

    async def network(self) -> tuple[bool, bool]:
        """(online, metered)."""
        if await has_owner(self.bus, NM_BUS):
            state = await get_property(self.bus, NM_BUS, NM_PATH, NM_BUS, "State")
            metered = await get_property(self.bus, NM_BUS, NM_PATH, NM_BUS, "Metered")
            if isinstance(state, int):
                return policy.facts_from_nm(state, metered if isinstance(metered, int) else 0)
        try:
            table = self.route_table.read_text()
        except OSError as exc:
            log.warning("cannot read %s: %s; assuming online", self.route_table, exc)
            return True, False
        return policy.facts_from_routes(table, self.metered_interfaces)


class SleepGuard:
    """A logind delay lock on sleep, and the PrepareForSleep signal."""

    def __init__(self, bus: MessageBus) -> None:
        self.logind = Logind(bus)
        self.lock = Inhibitor("sleep", "delay", "stop a sync in flight at a safe point")

    async def connect(self, on_sleep: Callable[[bool], None]) -> None:
        await self.logind.connect()
        self.logind.on_prepare_for_sleep(on_sleep)

    async def take(self) -> None:
        if self.lock.held:
            return
        try:
            fd = await self.logind.iface.call_inhibit(  # type: ignore[attr-defined]
                self.lock.what, WHO, self.lock.why, self.lock.mode)
        except DBusError as exc:
            raise ServiceUnavailable("logind", f"cannot take the delay lock on sleep: "
                                     f"{exc.text}") from exc
        self.lock.fd = fd

    def release(self) -> None:
        self.lock.release()

    async def delay_max(self) -> float:
        """How long logind waits for delay locks before sleeping (seconds)."""
        return await self.logind.inhibit_delay_max() or 5.0
