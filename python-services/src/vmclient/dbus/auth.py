"""Who may call a method: root, members of the ``vmclient`` group, and polkit.

The bus policy (``data/dbus-1/system.d``) already refuses other callers; this
is the daemon's own check behind it.  Where polkitd runs, its answer decides
(the shipped rule grants the group); where it does not, the caller's uid and
groups do.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd

from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import MessageType

from ..errors import PermissionDenied
from . import names

log = logging.getLogger(__name__)


async def _call(bus: MessageBus, dest: str, path: str, iface: str, member: str,
                signature: str = "", body: list[object] | None = None) -> list[object]:
    reply = await bus.call(Message(destination=dest, path=path, interface=iface, member=member,
                                   signature=signature, body=body or []))
    if reply is None or reply.message_type == MessageType.ERROR:
        text = reply.body[0] if reply is not None and reply.body else "no reply"
        raise PermissionDenied(f"cannot identify the caller: {member}: {text}")
    return list(reply.body)


async def caller_ids(bus: MessageBus, sender: str) -> tuple[int, set[int]]:
    """The caller's uid and groups, as the bus daemon knows them."""
    (untrusted_creds,) = await _call(bus, names.DBUS_BUS, names.DBUS_PATH, names.DBUS_IFACE,
                                     "GetConnectionCredentials", "s", [sender])
    assert isinstance(untrusted_creds, dict)
    uid_v = untrusted_creds.get("UnixUserID")
    if not isinstance(uid_v, Variant):
        raise PermissionDenied("the bus does not tell the caller's user")
    uid = int(uid_v.value)
    gids_v = untrusted_creds.get("UnixGroupIDs")
    if isinstance(gids_v, Variant):
        gids = {int(g) for g in gids_v.value}
    else:
        try:
            pw = pwd.getpwuid(uid)
            gids = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        except KeyError:
            gids = set()
    return uid, gids


async def _polkit_available(bus: MessageBus) -> bool:
    (has,) = await _call(bus, names.DBUS_BUS, names.DBUS_PATH, names.DBUS_IFACE,
                         "NameHasOwner", "s", [names.POLKIT_BUS])
    return bool(has)


async def authorize(bus: MessageBus, sender: str, action: str, what: str) -> None:
    """Return if ``sender`` may do ``action``; raise :class:`PermissionDenied` otherwise."""
    uid, gids = await caller_ids(bus, sender)
    if uid == 0:
        return
    if await _polkit_available(bus):
        subject = ("system-bus-name", {"name": Variant("s", sender)})
        reply = await bus.call(Message(
            destination=names.POLKIT_BUS, path=names.POLKIT_PATH, interface=names.POLKIT_IFACE,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[subject, action, {}, 0, ""]))
        if reply is not None and reply.message_type != MessageType.ERROR:
            authorized = bool(reply.body[0][0])
            log.debug("polkit says %s for uid %d on %s", authorized, uid, action)
            if authorized:
                return
            raise PermissionDenied(f"polkit refuses {action} to uid {uid}: {what} needs root "
                                   f"or membership of the '{names.ADMIN_GROUP}' group")
        log.warning("polkit did not answer (%s); falling back to the group check",
                    reply.body if reply is not None else "no reply")
    try:
        admin_gid = grp.getgrnam(names.ADMIN_GROUP).gr_gid
    except KeyError:
        admin_gid = None
    if admin_gid is not None and admin_gid in gids:
        return
    raise PermissionDenied(f"{what} needs root or membership of the '{names.ADMIN_GROUP}' "
                           f"group (caller uid {uid})")
