"""Adapter to systemd-logind: inhibitor locks, sleep signals, Suspend; Reboot and IdleHint
(vmclient-syncd's maintenance restart)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from importlib import resources

from dbus_fast.aio import MessageBus, ProxyInterface
from dbus_fast.errors import DBusError
from dbus_fast.introspection import Node

from ..dbus import names
from ..errors import ServiceUnavailable

log = logging.getLogger(__name__)

WHO = "vmclient-powerd"


def _introspection() -> str:
    return (resources.files("vmclient.dbus") / "xml" / f"{names.LOGIND_MANAGER}.xml").read_text()


class Inhibitor:
    """One logind inhibitor lock: held while its fd is open."""

    def __init__(self, what: str, mode: str, why: str) -> None:
        self.what, self.mode, self.why = what, mode, why
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            log.debug("released %s lock on %s", self.mode, self.what)


class Logind:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self._iface: ProxyInterface | None = None

    async def connect(self) -> None:
        node = Node.parse(_introspection())
        obj = self.bus.get_proxy_object(names.LOGIND_BUS, names.LOGIND_PATH, node)
        self._iface = obj.get_interface(names.LOGIND_MANAGER)

    @property
    def iface(self) -> ProxyInterface:
        if self._iface is None:
            raise RuntimeError("Logind.connect() first")
        return self._iface

    async def take(self, lock: Inhibitor) -> None:
        if lock.held:
            return
        try:
            fd = await self.iface.call_inhibit(lock.what, WHO, lock.why, lock.mode)  # type: ignore[attr-defined]
        except DBusError as exc:
            raise ServiceUnavailable("logind", f"cannot take the {lock.mode} lock on "
                                     f"{lock.what}: {exc.text}") from exc
        lock.fd = fd
        log.debug("took %s lock on %s", lock.mode, lock.what)

    async def suspend(self) -> None:
        try:
            await self.iface.call_suspend(False)  # type: ignore[attr-defined]
        except DBusError as exc:
            raise ServiceUnavailable("logind", f"Suspend refused: {exc.text}") from exc

    async def reboot(self) -> None:
        """``Reboot(false)``: systemd stops the services, vmclient-powerd saves the VMs."""
        try:
            await self.iface.call_reboot(False)  # type: ignore[attr-defined]
        except DBusError as exc:
            raise ServiceUnavailable("logind", f"Reboot refused: {exc.text}") from exc

    async def idle(self) -> bool:
        """logind's ``IdleHint``: every session is idle (no one uses the laptop)."""
        try:
            return bool(await self.iface.get_idle_hint())  # type: ignore[attr-defined]
        except DBusError as exc:
            raise ServiceUnavailable("logind", f"IdleHint unreadable: {exc.text}") from exc

    async def inhibit_delay_max(self) -> float | None:
        """logind's InhibitDelayMaxUSec in seconds, or None if it does not say."""
        try:
            usec = await self.iface.get_inhibit_delay_max_u_sec()  # type: ignore[attr-defined]
        except DBusError:
            return None
        return float(usec) / 1e6 if usec else None

    async def docked(self) -> bool:
        try:
            return bool(await self.iface.get_docked())  # type: ignore[attr-defined]
        except DBusError:
            return False

    def on_prepare_for_sleep(self, cb: Callable[[bool], None]) -> None:
        self.iface.on_prepare_for_sleep(cb)  # type: ignore[attr-defined]

    def on_prepare_for_shutdown(self, cb: Callable[[bool], None]) -> None:
        self.iface.on_prepare_for_shutdown(cb)  # type: ignore[attr-defined]
