"""The shell's D-Bus client: vmclient-provd's Display object, through Gio.

Gio runs on the GLib main loop the GTK shell runs anyway (dbus-fast wants
asyncio).  ``OpenDisplay`` replies with a socket: the caller owns it and hands
it to a SPICE channel (which closes it).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import gi

from ..dbus import names
from ..errors import RemoteError

gi.require_version("Gio", "2.0")
from gi.repository import Gio, GLib  # noqa: E402

TIMEOUT_MS = 30_000
T = TypeVar("T")

@dataclass(frozen=True)
class VM:
    name: str
    kind: str  # business | private (as provd recorded it)
    state: str


def remote_error(err: GLib.Error) -> RemoteError:
    """A failed call's D-Bus error as a :class:`RemoteError` (its name, its message)."""
    name = Gio.DBusError.get_remote_error(err) or ""
    Gio.DBusError.strip_remote_error(err)
    return RemoteError(name, str(err.message))


def system_bus() -> Any:
    return Gio.bus_get_sync(Gio.BusType.SYSTEM, None)


def _call_args(member: str, args: Any, reply: str) -> tuple[Any, ...]:
    return (names.PROVISION_BUS_NAME, names.DISPLAY_PATH, names.DISPLAY_IFACE, member, args,
            GLib.VariantType.new(reply), Gio.DBusCallFlags.NONE, TIMEOUT_MS)


def reply_fd(result: Any, fdlist: Any) -> int | None:
    """The descriptor a ``(h)`` reply names (the others it carried closed); None: none."""
    (index,) = result.unpack()
    fds = list(fdlist.steal_fds()) if fdlist is not None else []
    fd = fds.pop(index) if 0 <= index < len(fds) else None
    for other in fds:
        os.close(other)
    return fd


def _fd_of(result: Any, fdlist: Any) -> int:
    fd = reply_fd(result, fdlist)
    if fd is None:
        raise RemoteError("", "vmclient-provd sent no file descriptor with OpenDisplay")
    return fd


def open_display(conn: Any, vm: str, done: Callable[[int | None, RemoteError | None], None]
                 ) -> None:
    """Ask for a new connection to ``vm``'s display; ``done(fd, None)`` or ``done(None, err)``."""
    def finish(c: Any, res: Any) -> None:
        try:
            result, fdlist = c.call_with_unix_fd_list_finish(res)
        except GLib.Error as err:
            done(None, remote_error(err))
            return
        try:
            fd = _fd_of(result, fdlist)
        except RemoteError as err:
            done(None, err)
            return
        done(fd, None)
    conn.call_with_unix_fd_list(*_call_args("OpenDisplay", GLib.Variant("(s)", (vm,)), "(h)"),
                                None, None, finish)


def open_display_sync(conn: Any, vm: str) -> int:
    try:
        result, fdlist = conn.call_with_unix_fd_list_sync(
            *_call_args("OpenDisplay", GLib.Variant("(s)", (vm,)), "(h)"), None, None)
    except GLib.Error as err:
        raise remote_error(err) from None
    return _fd_of(result, fdlist)


def list_vms_sync(conn: Any) -> list[VM]:
    try:
        result = conn.call_sync(*_call_args("ListVMs", None, "(a(sss))"), None)
    except GLib.Error as err:
        raise remote_error(err) from None
    (rows,) = result.unpack()
    return [VM(str(n), str(k), str(s)) for n, k, s in rows]


def _rows(done: Callable[[list[T] | None, RemoteError | None], None],
          row: Callable[..., T]) -> Callable[[Any, Any], None]:
    """A call's callback: ``done([row(*r) for r in rows], None)``, or ``done(None, err)``."""
    def finish(c: Any, res: Any) -> None:
        try:
            (rows,) = c.call_finish(res).unpack()
        except GLib.Error as err:
            done(None, remote_error(err))
            return
        done([row(*r) for r in rows], None)
    return finish


def list_vms(conn: Any, done: Callable[[list[VM] | None, RemoteError | None], None]) -> None:
    """The VMs the shell may show: ``done(vms, None)`` or ``done(None, err)``."""
    conn.call(*_call_args("ListVMs", None, "(a(sss))"), None,
              _rows(done, lambda n, k, s: VM(str(n), str(k), str(s))))


@dataclass(frozen=True)
class AssignedVM:
    vm: str
    image: str
    order: int
    outcome: str  # done | failed (the agent's assign order)
    detail: str


def list_assigned(conn: Any, done: Callable[[list[AssignedVM] | None, RemoteError | None], None]
                  ) -> None:
    """What IT assigned to this laptop (provd's ``ListAssigned``)."""
    finish = _rows(done, lambda v, i, o, out, d: AssignedVM(str(v), str(i), int(o), str(out),
                                                            str(d)))
    conn.call(names.PROVISION_BUS_NAME, names.PROVISION_PATH, names.PROVISION_IFACE,
              "ListAssigned", None, GLib.VariantType.new("(a(ssuss))"), Gio.DBusCallFlags.NONE,
              TIMEOUT_MS, None, finish)
