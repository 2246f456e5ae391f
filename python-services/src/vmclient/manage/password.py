"""The seat user's first password (``SetPassword`` on syncd's Management object).

The shell's first start asks the person for the password the lock screen will
then ask for.  We never hash a password ourselves: root runs shadow's own
tools, ``passwd --status`` (is a password set?) and ``chpasswd`` (the user's
line on its stdin; it hashes as ``/etc/login.defs`` and PAM's
``common-password`` say).  The call sets only the **caller's own** password,
and only while that account has none (``passwd --status``: ``L`` locked or
``NP`` none): changing a password needs the old one, which is not this call's
business.
"""

from __future__ import annotations

import asyncio
import pwd

from ..errors import PermissionDenied, UsageError, VMClientError

MIN_LENGTH = 8
MAX_LENGTH = 256
PASSWD, CHPASSWD = "passwd", "chpasswd"


class PasswordSetAlready(PermissionDenied):
    """Permission denied: {} has a password already: change it with the old one"""

    # its own name: the shell's first start goes on past its password step then
    dbus_name = PermissionDenied.dbus_name.rsplit(".", 1)[0] + ".PasswordSetAlready"


def check_password(untrusted_password: str) -> str:
    """The password, or :class:`UsageError` saying what is wrong (never echoing it)."""
    if any(c in untrusted_password for c in "\n\r\0"):
        raise UsageError("the password has a line break or NUL in it")
    if len(untrusted_password) < MIN_LENGTH:
        raise UsageError(f"the password is too short: at least {MIN_LENGTH} characters")
    if len(untrusted_password) > MAX_LENGTH:
        raise UsageError(f"the password is too long: at most {MAX_LENGTH} characters")
    return untrusted_password


def has_password(status_line: str, user: str) -> bool:
    """From ``passwd --status USER``: ``USER P …`` is a usable password."""
    fields = status_line.split()
    if len(fields) < 2 or fields[0] != user:
        raise VMClientError(f"passwd --status {user}: unexpected answer {status_line[:80]!r}")
    return fields[1] == "P"


async def _run(argv: list[str], stdin: bytes | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin)
    if proc.returncode != 0:
        raise VMClientError(f"{argv[0]} failed ({proc.returncode}): "
                            f"{err.decode(errors='replace').strip()[:300]}")
    return out.decode(errors="replace")


async def set_first_password(uid: int, untrusted_password: str) -> str:
    """Set the password of the account ``uid`` if it has none; its user name."""
    if uid == 0:
        raise PermissionDenied("root's password is not set this way")
    password = check_password(untrusted_password)
    del untrusted_password
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise VMClientError(f"no account for uid {uid}") from None
    if has_password(await _run([PASSWD, "--status", user]), user):
        raise PasswordSetAlready(user)
    await _run([CHPASSWD], f"{user}:{password}\n".encode())
    return user
