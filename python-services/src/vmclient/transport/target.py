"""Where an SFTP repository is, how to log in, and the errors of reaching it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DBUS_ERROR_PREFIX, EXIT_NOPERM, EXIT_UNAVAILABLE
from ..store.errors import StoreError
from .ssh import Endpoint, Failure


class RemoteUnavailable(StoreError):
    """SFTP {} of {!r} on {} failed after {} attempt(s): {}"""

    exit_code = EXIT_UNAVAILABLE
    dbus_name = DBUS_ERROR_PREFIX + "RemoteUnavailable"

    def __init__(self, op: str, path: str, server: str, attempts: int, problem: object) -> None:
        super().__init__(op, path, server, attempts, problem)
        self.op, self.path, self.server = op, path, server


class RemoteRefused(StoreError):
    """SFTP server {} refused {} of {!r}: {}"""

    exit_code = EXIT_NOPERM
    dbus_name = DBUS_ERROR_PREFIX + "RemoteRefused"

    def __init__(self, server: str, op: str, path: str, problem: object) -> None:
        super().__init__(server, op, path, problem)
        self.op, self.path, self.server = op, path, server


# One connection per core, at most 4: each ssh process takes a core for its crypto while
# it transfers, so more connections than cores only contend.
DEFAULT_CONNECTIONS = max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class SFTPTarget:
    """Where a repository is and how to log in (the device's key, the pinned host key;
    the admin may add an ssh-agent, :attr:`agent`)."""

    host: str
    user: str
    key_file: Path | None  # None: the agent's keys only
    known_hosts: Path
    port: int = 22
    root: str = ""  # directory holding the repository on the server ("" = login directory)
    connections: int = DEFAULT_CONNECTIONS
    attempts: int = 4
    timeout: float = 30.0
    backoff: float = 0.5  # seconds before the 2nd attempt, doubled for each further one
    subsystem: str = "sftp"
    ssh_config: Path | None = None  # an ssh_config file for ssh to read (None: none)
    # ``user`` "": the account is asked of this at each login (the device's own account,
    # known only once it is enrolled; it raises a VMClientError saying so before)
    account: Callable[[], str] | None = field(default=None, compare=False)
    agent: Path | None = None  # the admin's ssh-agent socket; the laptop daemons use none

    def login(self) -> str:
        """The account to log in as."""
        if self.user or self.account is None:
            return self.user
        return self.account()

    @property
    def server(self) -> str:
        return f"{self.login()}@{self.host}:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.login(), self.key_file, self.known_hosts,
                        self.subsystem, self.timeout, self.ssh_config, agent=self.agent)

    @property
    def credentials(self) -> str:
        """The SSH credentials, named for a person (in messages)."""
        named = [str(self.key_file)] if self.key_file else []
        if self.agent:
            named.append(f"the keys of the ssh-agent at {self.agent}")
        return " or ".join(named)


ADVICE = {
    Failure.HOST_KEY_CHANGED: "its host key does not match the one pinned in {kh}; if the "
                              "server's key was changed on purpose, pin the new one there",
    Failure.HOST_KEY_UNKNOWN: "its host key is not in {kh}; pin the server's host key there",
    Failure.AUTH: "authentication with {key} failed (is the key enrolled on the server?)",
    Failure.SUBSYSTEM: "it refused the SFTP subsystem; check the server's sshd configuration",
}
