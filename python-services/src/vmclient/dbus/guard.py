"""Authorise, then dispatch, the method calls of one of our D-Bus objects.

A message handler in front of dbus-fast's own dispatch: every call to a
listed member is authorised first (:func:`auth.authorize`: root, the
``vmclient`` group, polkit) and replied to exactly once, with the handler's
result or a D-Bus error named after the :class:`VMClientError` (anything else
is a bug: logged with its traceback, replied to as ``Error.Failed``).  File
descriptors that come with a call (``h``) are handed to the handler and closed
once it is done.  A handler that passes file descriptors back returns
:class:`WithFds`: the guard closes them once the reply has been written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, SignatureTree
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType

from ..errors import UsageError, VMClientError
from . import auth, names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WithFds:
    """A reply body whose ``h`` values index ``fds``; ours to close once sent."""

    body: list[Any]
    fds: list[int]


@dataclass(frozen=True)
class Member:
    """One method: its signatures, what it does (for refusals) and its handler."""

    in_sig: str
    out_sig: str
    what: str
    handler: Callable[[list[Any]], Awaitable[list[Any] | WithFds]]
    with_caller: bool = False  # the handler gets the caller's uid before the arguments


async def _reply(bus: MessageBus, msg: Message, sig: str, result: list[Any] | WithFds) -> None:
    if not isinstance(result, WithFds):
        bus.send(Message.new_method_return(msg, sig, result))
        return
    try:
        await bus.send(Message.new_method_return(msg, sig, result.body, result.fds))
    finally:
        for fd in result.fds:
            os.close(fd)


def name_out_args(node: Any, out_names: Mapping[str, str]) -> Any:
    """Introspection as the shipped XML: dbus-fast cannot name out-arguments itself."""
    for m in node.methods:
        for arg in m.out_args:
            arg.name = out_names.get(m.name, arg.name)
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
    tasks: set[asyncio.Task[None]] = set()

    async def run(msg: Message, m: Member, fds: tuple[int, ...]) -> None:
        try:
            assert msg.sender is not None
            await auth.authorize(bus, msg.sender, action, m.what)
            args = _with_fds(msg, fds)
            if m.with_caller:
                args = [(await auth.caller_ids(bus, msg.sender))[0], *args]
            await _reply(bus, msg, m.out_sig, await m.handler(args))
        except VMClientError as exc:
            log.info("%s for %s: %s", msg.member, msg.sender, exc)
            bus.send(Message.new_error(msg, exc.dbus_name, str(exc)))
        except Exception as exc:  # a bug: still reply, then log the traceback
            if not bus.connected:  # the daemon is stopping: nobody to reply to, no bug
                log.info("%s for %s: no reply, the bus connection is closed", msg.member,
                         msg.sender)
                return
            log.exception("%s failed", msg.member)
            bus.send(Message.new_error(msg, names.ERROR_PREFIX + "Failed",
                                       f"internal error: {exc}"))
        finally:
            _close(fds)

    def guard(msg: Message) -> bool:
        # The descriptors that came with this message, taken now: dbus-fast hands a
        # message without any the list its reader fills with the *next* message's
        # descriptors (a logind lock's fd, say), so msg.unix_fds read later is not
        # this message's to close.
        fds = tuple(msg.unix_fds)
        m = members.get(msg.member or "")
        if (msg.message_type != MessageType.METHOD_CALL or msg.path != path
                or msg.interface not in (None, iface) or m is None
                or msg.signature != m.in_sig):
            if msg.path == path:
                _close(fds)  # nobody else takes descriptors sent to our object
            return False
        task = asyncio.get_running_loop().create_task(run(msg, m, fds))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return True

    bus.add_message_handler(guard)
