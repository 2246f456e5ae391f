"""Authorise, then dispatch, the method calls of one of our D-Bus objects.

A message handler in front of dbus-fast's own dispatch: every call to a
listed member is authorised first (:func:`auth.authorize`: root, the
``vmclient`` group, polkit) and replied to exactly once, with the handler's
result or a D-Bus error named after the :class:`VMClientError` (anything else
is a bug: logged with its traceback, replied to as ``Error.Failed``).  File
descriptors that come with a call (``h``) are handed to the handler and closed
once it is done.  A handler that passes file descriptors back returns
:class:`WithFds`: the guard closes them once the reply has been written.

The members' signatures come from the interface's shipped introspection XML
(``dbus/xml/<interface>.xml``, installed in ``/usr/share/dbus-1/interfaces``):
a call whose signature differs is not ours and falls through to dbus-fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from dbus_fast import Message, SignatureTree
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType
from dbus_fast.introspection import Interface, Node

from ..errors import DBUS_ERROR_PREFIX, UsageError, VMClientError
from . import auth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WithFds:
    """A reply body whose ``h`` values index ``fds``; ours to close once sent."""

    body: list[Any]
    fds: list[int]


@dataclass(frozen=True)
class Member:
    """One method: what it does (for refusals) and its handler."""

    what: str
    handler: Callable[[list[Any]], Awaitable[list[Any] | WithFds]]
    with_caller: bool = False  # the handler gets the caller's uid before the arguments


@functools.cache
def shipped_interface(iface: str) -> Interface:
    """Our interface ``iface`` as its shipped introspection XML declares it."""
    text = (resources.files("vmclient.dbus") / "xml" / f"{iface}.xml").read_text()
    (interface,) = [i for i in Node.parse(text).interfaces if i.name == iface]
    return interface


def shipped_methods(iface: str) -> dict[str, tuple[str, str]]:
    """(in, out) signature of every method of our interface ``iface``, from its shipped
    introspection XML."""
    return {m.name: (m.in_signature, m.out_signature) for m in shipped_interface(iface).methods}


async def _reply(bus: MessageBus, msg: Message, sig: str, result: list[Any] | WithFds) -> None:
    if not isinstance(result, WithFds):
        bus.send(Message.new_method_return(msg, sig, result))
        return
    try:
        await bus.send(Message.new_method_return(msg, sig, result.body, result.fds))
    finally:
        for fd in result.fds:
            os.close(fd)


def name_out_args(node: Interface) -> Interface:
    """Introspection as the shipped XML: dbus-fast cannot name out-arguments itself, so
    they are named as the XML names them."""
    shipped = {m.name: m for m in shipped_interface(node.name).methods}
    for m in node.methods:
        if m.name in shipped:
            for arg, named in zip(m.out_args, shipped[m.name].out_args, strict=False):
                arg.name = named.name
    return node


def _with_fds(msg: Message, fds: tuple[int, ...]) -> list[Any]:
    """The call's arguments, each top-level ``h`` (an index into the call's descriptors
    ``fds``) replaced by the descriptor itself (closed by the guard after the call)."""
    args = list(msg.body)
    for i, t in enumerate(SignatureTree(msg.signature).types):
        if t.token == "h":
            index = args[i]
            if not isinstance(index, int) or not 0 <= index < len(fds):
                raise UsageError(f"argument {i}: no file descriptor came with the call")
            args[i] = fds[index]
    return args


def _close(fds: tuple[int, ...]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def install_method_guard(bus: MessageBus, path: str, iface: str, action: str,
                         members: Mapping[str, Member]) -> None:
    """Authorise (polkit ``action``) and dispatch the calls of ``members`` of ``iface`` at
    ``path``; each must be a method of the interface's shipped XML (KeyError if not)."""
    shipped = shipped_methods(iface)
    table = {name: (m, *shipped[name]) for name, m in members.items()}
    tasks: set[asyncio.Task[None]] = set()

    async def run(msg: Message, m: Member, out_sig: str, fds: tuple[int, ...]) -> None:
        try:
            assert msg.sender is not None
            await auth.authorize(bus, msg.sender, action, m.what)
            args = _with_fds(msg, fds)
            if m.with_caller:
                args = [(await auth.caller_ids(bus, msg.sender))[0], *args]
            await _reply(bus, msg, out_sig, await m.handler(args))
        except Exception as exc:
            if not bus.connected:  # the daemon is stopping: nobody to reply to, no bug
                log.info("%s for %s: no reply, the bus connection is closed (%s)",
                         msg.member, msg.sender, exc)
                return
            if isinstance(exc, VMClientError):
                log.info("%s for %s: %s", msg.member, msg.sender, exc)
                bus.send(Message.new_error(msg, exc.dbus_name, str(exc)))
                return
            # a bug: still reply, then log the traceback
            log.exception("%s failed", msg.member)
            bus.send(Message.new_error(msg, DBUS_ERROR_PREFIX + "Failed",
                                       f"internal error: {exc}"))
        finally:
            _close(fds)

    def guard(msg: Message) -> bool:
        # The descriptors that came with this message, taken now: dbus-fast hands a
        # message without any the list its reader fills with the *next* message's
        # descriptors (a logind lock's fd, say), so msg.unix_fds read later is not
        # this message's to close.
        fds = tuple(msg.unix_fds)
        entry = table.get(msg.member or "")
        if (msg.message_type != MessageType.METHOD_CALL or msg.path != path
                or msg.interface not in (None, iface) or entry is None
                or msg.signature != entry[1]):
            if msg.path == path:
                _close(fds)  # nobody else takes descriptors sent to our object
            return False
        m, _in_sig, out_sig = entry
        task = asyncio.get_running_loop().create_task(run(msg, m, out_sig, fds))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    bus.add_message_handler(guard)
