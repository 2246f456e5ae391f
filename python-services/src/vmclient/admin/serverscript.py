"""The storage server's side of enrolment, written to a file, never into normal output.

``enrol`` and ``enrol --accept`` used to print a root shell script between their
messages, with text from laptops' requests a line away: the admin had to cut it
out by hand.  Now the commands write one reviewed-then-run script
(``--server-script FILE``; default a new file in the key directory's
``server-setup/``, 0600, never overwriting; ``-`` prints it, for a pipe) and
print only where it is and what it does not do.

The script does, per device: the account, its directories and its
authorized-keys file, and appends the device's ``Match`` block to sshd_config
unless a block for that device is there.  It does **not** apply the
server-wide settings (:data:`GLOBAL_CONFIG`: they change sshd for every account
on the server): it lists them, for the admin to set once.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from ..errors import UsageError
from .sshd import GLOBAL_CONFIG, Confinement

SETUP_DIR = "server-setup"


def server_wide_settings() -> list[str]:
    return [line for line in GLOBAL_CONFIG.splitlines() if line and not line.startswith("#")]


def render(confinements: list[tuple[str, Confinement]], now: int) -> str:
    """One shell script for ``(device id, confinement)`` pairs (pure)."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
    lines = ["#!/bin/sh",
             f"# vmclient: storage-server setup for {len(confinements)} enrolled device(s), "
             f"written by vmclient-admin on {stamp}.",
             "# Review it, then run it as root on the storage server.",
             "#",
             "# SERVER-WIDE settings, NOT applied by this script (they change sshd for every",
             "# account on this server): set them once in sshd_config, before any Match block:",
             *(f"#     {s}" for s in server_wide_settings()),
             "set -e",
             'SSHD_CONFIG="${SSHD_CONFIG:-/etc/ssh/sshd_config}"']
    for device, conf in confinements:
        first = conf.match_block.splitlines()[0]
        lines += ["", f"# --- device {device}: account {conf.account} (this device only) ---",
                  conf.script().removeprefix("set -e\n").rstrip("\n"),
                  f"if ! grep -qxF {shlex.quote(first)} \"$SSHD_CONFIG\"; then",
                  "cat >> \"$SSHD_CONFIG\" <<'VMCLIENT_MATCH'",
                  conf.match_block.rstrip("\n"),
                  "VMCLIENT_MATCH",
                  "fi"]
    lines += ["", "# then check and reload sshd: sshd -t && systemctl reload sshd", ""]
    return "\n".join(lines)


def check_target(where: str | None) -> None:
    """Refuse a ``--server-script`` that exists before anything is enrolled."""
    if where not in (None, "-") and Path(where).exists():
        raise UsageError(f"--server-script {where}: exists; name a new file")


def write(text: str, where: str | None, key_dir: Path, now: int) -> str:
    """Write the script to ``where`` (``-``: stdout); returns where it went."""
    if where == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return "standard output"
    if where is None:
        folder = key_dir / SETUP_DIR
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        path = folder / f"enrol-{stamp}.sh"
        n = 1
        while path.exists():
            n += 1
            path = folder / f"enrol-{stamp}-{n}.sh"
    else:
        path = Path(where)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--server-script {path}: exists; name a new file") from None
    except OSError as exc:
        raise UsageError(f"--server-script {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return str(path)


def summary(where: str, count: int) -> str:
    return (f"storage-server setup for {count} device(s) written to {where}: review it, then "
            "run it as root on the storage server.\nServer-wide sshd settings it does not "
            "apply (they affect every account on the server; set once): "
            + "; ".join(server_wide_settings()))
