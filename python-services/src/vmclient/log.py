"""Logging set-up shared by the daemons and the CLI.

Under systemd (``JOURNAL_STREAM`` names our stderr) lines are ``LEVEL: message``
without a timestamp, since journald adds one, and carry the syslog priority
prefix (``<3>``) so the journal keeps the level.  In debug mode the origin
(``module.func:line``) is added.  Per-VM loggers are children of
``vmclient.vm`` so a VM's lines can be filtered.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """``<prio>LEVEL: message`` for journald's stream transport."""

    def __init__(self, debug: bool = False) -> None:
        fmt = "%(levelname)s: %(message)s"
        if debug:
            fmt = "%(levelname)s: %(name)s.%(funcName)s:%(lineno)d: %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def under_journald(environ: Mapping[str, str] | None = None) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    env = os.environ if environ is None else environ
    stream = env.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def setup(debug: bool = False, *, stream: object = None) -> None:
    """Configure the root logger once for a daemon or the CLI."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    if under_journald():
        handler.setFormatter(JournalFormatter(debug))
    else:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        if debug:
            fmt = "%(asctime)s %(levelname)s %(name)s.%(funcName)s:%(lineno)d: %(message)s"
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    # libraries that are chatty at DEBUG
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def vm_logger(name: str) -> logging.Logger:
    """The logger of one VM: ``vmclient.vm.<name>``."""
    return logging.getLogger("vmclient.vm").getChild(name.replace(".", "_"))
