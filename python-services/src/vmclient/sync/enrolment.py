"""Enrolment asked over D-Bus (``Enrol``): what ``vmclientctl enrol`` does, in syncd.

The management agent lives in vmclient-syncd, so the shell's first start asks
syncd to enrol the laptop with the one-time code IT gave the user.  syncd
knows the rest from its configuration: the repository, the pinned admin key,
the enrolment drop box (``[manage] dropbox_user``/``dropbox_key``, sftp://
only) and the laptop's name (``[manage] device_name``, else the host name).
The code is checked for its form here (IT's codes: 16 of
:data:`enrol.CODE_ALPHABET`, dashes and spaces ignored); whether IT issued it
is decided by IT (:func:`enrol.process_requests`), which the ``Enrolment``
property then shows (requested → enrolled).  A request IT refused (a wrong,
used or expired code) is not enrolling any more: ``Enrolment`` is 1 again and
``EnrolmentRefused`` says IT's reason (:func:`check_refused`, each cycle
while the request is pending, through the drop box on sftp://).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..errors import UsageError, VMClientError
from ..host.keys import read_admin_key
from ..manage import enrol
from ..store import crypto
from ..transport import close_store, is_url, open_store
from . import config as sconfig

# The Enrolment property (u): 0 = unknown (no management agent), then in order.
UNKNOWN, NONE, REQUESTED, ENROLLED = 0, 1, 2, 3


class InvalidCode(UsageError):
    """Not an enrolment code from IT: {}"""

    dbus_name = UsageError.dbus_name.rsplit(".", 1)[0] + ".InvalidCode"


def check_code(untrusted_code: str) -> str:
    """The code normalised, or :class:`InvalidCode` saying what is wrong (never echoing
    the code: it is a secret until used, and refusals are logged)."""
    code = enrol.normalise(untrusted_code)
    bad = sorted({c for c in code if c not in enrol.CODE_ALPHABET})
    if bad:
        shown = "".join(c if c.isprintable() and c.isascii() else "?" for c in bad[:5])
        raise InvalidCode(f"it contains {shown!r}; codes have only the letters A-Z "
                          "(no I, O) and the digits 2-9")
    if len(code) != enrol.CODE_LENGTH:
        raise InvalidCode(f"it has {len(code)} letters and digits; codes have "
                          f"{enrol.CODE_LENGTH} (dashes and spaces do not count)")
    return code


def state(agent: Any) -> int:
    if agent is None:
        return UNKNOWN
    s = agent.state_file.load()
    if s.enrolled and not s.wiped:
        return ENROLLED
    return REQUESTED if s.device and not s.wiped and not s.enrolled else NONE


def refused(agent: Any) -> str:
    """IT's reason for refusing the last request, while the laptop is not enrolling."""
    if agent is None:
        return ""
    s = agent.state_file.load()
    return "" if s.device or s.enrolled else str(s.refused)


def dropbox_location(location: str, user: str) -> str:
    """The repository URL with the drop box's account in place of the device's."""
    url = urlsplit(location)
    host = url.hostname or ""
    netloc = f"{quote(user, safe='')}@{host}" + (f":{url.port}" if url.port else "")
    return urlunsplit((url.scheme, netloc, url.path, "", ""))


async def request(cfg: sconfig.SyncConfig, agent: Any, hv: Any, untrusted_code: str) -> str:
    """Send the enrolment request; the device id.  The agent completes the enrolment
    on a later cycle, once IT has accepted the request."""
    if agent is None:
        raise VMClientError("remote management is off in this laptop's sync.toml "
                            "([manage] enabled = false): it cannot be enrolled")
    code = check_code(untrusted_code)
    del untrusted_code
    admin = read_admin_key(cfg.repository.admin_key)
    if admin is None:
        raise VMClientError(f"no admin key at {cfg.repository.admin_key}: this laptop's "
                            "image does not know its datacenter")
    name = cfg.manage.device_name or socket.gethostname().split(".")[0]
    async with _courier(cfg, agent, hv) as courier:
        if courier is None:
            raise VMClientError(f"enrolment through the drop box needs an sftp:// repository, "
                                f"not {cfg.repository.location}: on S3, IT issues the "
                                "device's access key (README, \"The datacenter on an S3 "
                                "bucket\")")
        return str(await courier.request_enrolment(crypto.raw_public(admin), name, code))


@contextlib.asynccontextmanager
async def _courier(cfg: sconfig.SyncConfig, agent: Any, hv: Any) -> AsyncIterator[Any]:
    """Who carries the enrolment's messages: ``agent`` itself on a local repository; on
    an sftp:// one, an agent of the same device over the drop box (a laptop not enrolled
    has no account of its own), as vmclientctl's request goes; None on S3 (no drop box:
    IT issues the access key)."""
    location = str(cfg.repository.location)
    if not is_url(location):
        yield agent
        return
    if location.startswith("s3://"):
        yield None
        return
    dropbox = open_store(dropbox_location(location, cfg.manage.dropbox_user),
                         key_file=cfg.manage.dropbox_key,
                         known_hosts=cfg.repository.known_hosts, connections=1)
    try:
        from ..manage.agent import Agent
        yield Agent(agent.cfg, dropbox, hv, keys=agent.keys)
    finally:
        await close_store(dropbox)


async def check_refused(cfg: sconfig.SyncConfig, agent: Any, hv: Any) -> str:
    """Whether IT refused the pending request: its reason, or "" (pending, or no request).
    A laptop without an account reads IT's answer as it sent the request: through the
    drop box on an sftp:// repository (a refusal is readable by every account)."""
    if agent is None:
        return ""
    s = agent.state_file.load()
    if s.enrolled or not s.device:
        return ""
    async with _courier(cfg, agent, hv) as courier:
        return "" if courier is None else str(await courier.enrolment_refused())
