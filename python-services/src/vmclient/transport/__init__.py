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
* ``s3://bucket/prefix[?endpoint=https://host:port&region=…]`` —
  :class:`~vmclient.transport.s3.S3Store` (S3-compatible object storage through
  boto3).  Credentials: a shared-credentials file (``s3_credentials``: the laptop's
  ``[repository] s3_credentials``, issued at enrolment; the admin's
  ``--s3-credentials``), else botocore's own chain (``AWS_ACCESS_KEY_ID`` and
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_PROFILE``).
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
        help="the datacenter repository: a local directory, sftp://[user@]host[:port]/path "
             "(no user: this device's own account, vmc-<device id>, once enrolled) or "
             "s3://bucket/prefix[?endpoint=https://host:port]")
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
    s3_credentials: Path = config.setting(
        Path("/var/lib/vmclient/device/s3-credentials"),
        help="the device's S3 access key (AWS shared-credentials format, mode 0600), "
             "issued at enrolment (s3:// only)")

    def open(self, *, connections: int | None = None,
             account: Callable[[], str] | None = None) -> RemoteStore:
        """The store; nothing is contacted before the first request.  ``account``: the
        device's own account, for a URL without ``user@`` (asked at each login)."""
        location = str(self.location)
        s3 = self.s3_credentials if location.startswith("s3://") and \
            self.s3_credentials.exists() else None
        return open_store(location, key_file=self.key_file,
                          known_hosts=self.known_hosts, connections=connections,
                          account=account, s3_credentials=s3)


def is_url(location: str) -> bool:
    return "://" in location


def open_store(location: str, *, key_file: str | Path | None = None,
               known_hosts: str | Path | None = None, connections: int | None = None,
               file_mode: int = 0o600, account: Callable[[], str] | None = None,
               agent: str | Path | None = None,
               s3_credentials: str | Path | None = None) -> RemoteStore:
    """The store at ``location``.  ``account``: whose account an ``sftp://host/`` URL
    (no ``user@``) logs in as, asked at each login; a user in the URL wins.  ``agent``:
    an ssh-agent socket whose keys may log in too (the admin's; see transport.ssh).
    ``s3_credentials``: the shared-credentials file of an ``s3://`` location."""
    if not is_url(location):
        return LocalDirStore(Path(location), file_mode=file_mode)
    url = urlsplit(location)
    if url.scheme == "s3":
        from .s3 import open_s3
        return open_s3(location, credentials=s3_credentials, connections=connections)
    if url.scheme != "sftp":
        raise UsageError(f"unsupported repository URL {location!r} "
                         "(sftp://, s3:// or a local path)")
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
