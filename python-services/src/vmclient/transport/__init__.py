"""Transports to a repository, and the one opener: a location (URL or path) -> a RemoteStore.

:mod:`vmclient.store` holds the format and the repository logic and imports no
transport; the daemons and tools open their store here.

* ``sftp://user@host[:port]/path`` — :class:`~vmclient.transport.sftp.SFTPStore`
  (OpenSSH's ``ssh`` carrying a small SFTP client).  Without ``user@``
  (``sftp://host/``, what a laptop image ships) the opener must say whose
  account it is (``account``): a laptop passes the rule that names its own
  account from its enrolled device id (:func:`vmclient.host.lease.device_account`),
  asked at each login, so one configuration serves every laptop.  The
  SSH private key (or, for the admin, an ssh-agent: ``agent``) and the
  ``known_hosts`` file that pins the server's host key are required (there is
  no trust-on-first-use).  The laptop daemons' :class:`Repository` never passes
  an agent.  ``/path`` is the repository
  directory as the account sees it: ``/`` for a device chrooted into the
  repository, the absolute path for the admin account.
* anything else — a local directory (:class:`~vmclient.transport.localfs.LocalDirStore`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import config
from ..errors import UsageError
from ..store.remote import RemoteStore
from ..store.transport import close_store
from .localfs import LocalDirStore


@dataclass(frozen=True)
class Repository:
    """The ``[repository]`` section every laptop daemon shares (provd, syncd and the
    management agent it hosts): where the datacenter is and what pins it."""

    location: str = config.setting(
        "/var/lib/vmclient/repository",
        help="the datacenter repository: a local directory or sftp://[user@]host[:port]/path "
             "(no user: this device's own account, vmc-<device id>, once enrolled)")
    key_file: Path = config.setting(
        Path("/var/lib/vmclient/device/ssh_ed25519"),
        help="the device's SSH private key, made at enrolment (sftp:// only)")
    known_hosts: Path = config.setting(
        Path("/etc/vmclient/known_hosts"),
        help="the datacenter's pinned SSH host key (sftp:// only)")
    admin_key: Path = config.setting(
        Path("/etc/vmclient/admin-key.pub"),
        help="the pinned admin Ed25519 public key: PEM, 32 raw bytes or their base64")
    timeout: float = config.setting(
        20.0, min=1, max=600, help="seconds the datacenter has to answer the probe")

    def open(self, *, connections: int | None = None,
             account: Callable[[], str] | None = None) -> RemoteStore:
        """The store; nothing is contacted before the first request.  ``account``: the
        device's own account, for a URL without ``user@`` (asked at each login)."""
        return open_store(str(self.location), key_file=self.key_file,
                          known_hosts=self.known_hosts, connections=connections,
                          account=account)


def is_url(location: str) -> bool:
    return "://" in location


def open_store(location: str, *, key_file: str | Path | None = None,
               known_hosts: str | Path | None = None, connections: int | None = None,
               file_mode: int = 0o600, account: Callable[[], str] | None = None,
               agent: str | Path | None = None) -> RemoteStore:
    """The store at ``location``.  ``account``: whose account an ``sftp://host/`` URL
    (no ``user@``) logs in as, asked at each login; a user in the URL wins.  ``agent``:
    an ssh-agent socket whose keys may log in too (the admin's; see transport.ssh)."""
    if not is_url(location):
        return LocalDirStore(Path(location), file_mode=file_mode)
    url = urlsplit(location)
    if url.scheme != "sftp":
        raise UsageError(f"unsupported repository URL {location!r} (sftp:// or a local path)")
    if not url.hostname or not (url.username or account):
        raise UsageError(f"repository URL {location!r} needs user@host")
    if (key_file is None and agent is None) or known_hosts is None:
        raise UsageError(f"{location}: an SSH key (a file or ssh-agent) and a known_hosts "
                         "file (pinned host key) are required")
    try:
        port = url.port or 22
    except ValueError as exc:
        raise UsageError(f"repository URL {location!r}: {exc}") from exc
    from .sftp import DEFAULT_CONNECTIONS, SFTPStore, SFTPTarget
    return SFTPStore(SFTPTarget(host=url.hostname, user=unquote(url.username or ""),
                                port=port, root=unquote(url.path) or "/",
                                key_file=Path(key_file) if key_file else None,
                                known_hosts=Path(known_hosts),
                                connections=connections or DEFAULT_CONNECTIONS,
                                account=account, agent=Path(agent) if agent else None))


__all__ = ["Repository", "close_store", "is_url", "open_store"]
