"""The lock screen's password check: PAM, service ``vmclient-shell``, off the GTK thread.

The shell runs as the seat's (unprivileged) user and checks that user's own
password.  PAM does the work: the image's ``/etc/pam.d/vmclient-shell``
(python-services/data/pam.d) includes ``common-auth`` and ``common-account``,
whose ``pam_unix`` runs its setgid helper ``unix_chkpwd`` for a caller that
cannot read ``/etc/shadow`` (the helper checks only the caller's own
password).  No password hashing here: pamela (python3-pamela in meta-python)
is the binding to libpam.

A check can take seconds (``pam_unix`` delays a failure, ``pam_faildelay``):
it runs in a thread and answers on the GLib main loop.
"""

from __future__ import annotations

import logging
import os
import pwd
import threading
from collections.abc import Callable

import gi

gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

log = logging.getLogger(__name__)

SERVICE = "vmclient-shell"


def user_name() -> str:
    """The user the shell runs as: whose password unlocks."""
    return pwd.getpwuid(os.getuid()).pw_name


def check(user: str, password: str, service: str = SERVICE) -> str | None:
    """None if PAM accepts ``password`` for ``user``; else why not, in words."""
    try:
        import pamela
    except ImportError:
        return "cannot check the password: the shell's PAM binding (pamela) is missing"
    try:
        pamela.authenticate(user, password, service=service, resetcred=0)
    except pamela.PAMError as exc:
        log.info("PAM refused %s's password (service %s): %s", user, service, exc)
        return "Wrong password"
    return None


def check_async(user: str, password: str, done: Callable[[str | None], None],
                service: str = SERVICE) -> None:
    """:func:`check` in a thread; ``done(error)`` runs on the GLib main loop."""
    def run() -> None:
        result = check(user, password, service)

        def answer() -> bool:
            done(result)
            return False
        GLib.idle_add(answer)
    threading.Thread(target=run, name="pam", daemon=True).start()
