"""Talking to our daemons over the system bus from the CLI."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType
from dbus_fast.errors import DBusError

from ..dbus import names
from ..errors import RemoteError, ServiceUnavailable

log = logging.getLogger(__name__)


# the D-Bus specification's default when DBUS_SYSTEM_BUS_ADDRESS is not set
DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"


def system_bus_address() -> str:
    return os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS


async def connect(*, fds: bool = False) -> MessageBus:
    """The system bus; ``fds``: able to pass file descriptors (``h``)."""
    log.debug("connecting to the system bus at %s", system_bus_address())
    try:
        return await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=fds).connect()
    except ValueError as exc:  # dbus_fast's InvalidAddressError
        raise ServiceUnavailable(f"the system bus ({system_bus_address()})",
                                 f"not a D-Bus address ({exc}): check "
                                 "DBUS_SYSTEM_BUS_ADDRESS") from exc
    except (OSError, DBusError) as exc:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServiceUnavailable(
            f"the system bus ({system_bus_address()})",
            f"{detail}. Is dbus running? (systemctl status dbus.socket dbus.service)") from exc


@contextlib.asynccontextmanager
async def connected(*, fds: bool = False) -> AsyncIterator[MessageBus]:
    """A system bus connection for one command, closed after it."""
    b = await connect(fds=fds)
    try:
        yield b
    finally:
        b.disconnect()


_DAEMON = {names.BUS_NAME: "vmclient-powerd", names.PROVISION_BUS_NAME: "vmclient-provd",
           names.SYNC_BUS_NAME: "vmclient-syncd"}


async def call(bus: MessageBus, path: str, iface: str, member: str, signature: str = "",
               body: list[Any] | None = None, *, destination: str = names.BUS_NAME,
               unix_fds: list[int] | None = None) -> list[Any]:
    log.debug("calling %s.%s on %s at %s", iface, member, destination, path)
    reply = await bus.call(Message(destination=destination, path=path, interface=iface,
                                   member=member, signature=signature, body=body or [],
                                   unix_fds=unix_fds or []))
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply.body else reply.error_name
        name = reply.error_name or ""
        if (name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                     "org.freedesktop.DBus.Error.NameHasNoOwner",
                     "org.freedesktop.systemd1.NoSuchUnit")
                or name.startswith("org.freedesktop.DBus.Error.Spawn.")):
            daemon = _DAEMON.get(destination, destination)
            raise ServiceUnavailable(
                f"{daemon} ({destination} on the system bus)",
                f"it is not running: {text}. Start it with 'systemctl start {daemon}'; "
                f"'journalctl -u {daemon}' tells why it stopped")
        if reply.error_name == "org.freedesktop.DBus.Error.AccessDenied":
            from ..errors import PermissionDenied

            raise PermissionDenied(f"{member} needs root or membership of the "
                                   f"'{names.ADMIN_GROUP}' group")
        raise RemoteError(reply.error_name or "", str(text))
    return list(reply.body)


async def get_all(bus: MessageBus, path: str, iface: str, *,
                  destination: str = names.BUS_NAME) -> dict[str, Any]:
    (props,) = await call(bus, path, "org.freedesktop.DBus.Properties", "GetAll", "s", [iface],
                          destination=destination)
    return {k: v.value for k, v in props.items()}


@contextlib.asynccontextmanager
async def properties_watched(bus: MessageBus, sender: str, path: str,
                             on_change: Callable[[dict[str, Any]], None]) -> AsyncIterator[None]:
    """``on_change(changed)`` with each PropertiesChanged of ``sender``'s object ``path``
    (the values unwrapped) while the block runs."""
    def on_message(msg: Message) -> None:
        if (msg.message_type == MessageType.SIGNAL and msg.member == "PropertiesChanged"
                and msg.path == path):
            on_change({k: v.value for k, v in msg.body[1].items()})

    bus.add_message_handler(on_message)
    rule = (f"type='signal',sender='{sender}',path='{path}',"
            "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'")
    try:
        await call(bus, names.DBUS_PATH, names.DBUS_IFACE, "AddMatch", "s", [rule],
                   destination=names.DBUS_BUS)
        yield
    finally:
        bus.remove_message_handler(on_message)
