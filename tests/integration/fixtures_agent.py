"""A real ssh-agent for the admin's keys (docs/admin-cli.md "ssh-agent").

* :func:`ssh_agent`: ``ssh-agent -D -a SOCKET`` in the foreground (its pid is ours to
  end), on a short path: a unix socket's path has at most 107 bytes, pytest's
  ``tmp_path`` can be longer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testlib import need


@contextlib.contextmanager
def ssh_agent(env: dict[str, str] | None = None) -> Iterator[Path]:
    need(shutil.which("ssh-agent") is not None and shutil.which("ssh-add") is not None,
         "OpenSSH's ssh-agent/ssh-add are missing (openssh-client)")
    where = Path(tempfile.mkdtemp(prefix="agent-"))
    sock = where / "sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 10
        while not sock.is_socket():
            assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(where, ignore_errors=True)


def ssh_add(sock: Path, *argv: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(["ssh-add", *argv], env={**os.environ, **(env or {}),
                                                "SSH_AUTH_SOCK": str(sock)},
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, r.stderr
