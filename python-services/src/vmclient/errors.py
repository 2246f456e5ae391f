"""The one error root of vmclient.

A :class:`VMClientError` is something that can be shown to a user as it is: the
class docstring is the message template, formatted with the constructor's
arguments.  Each class carries the CLI exit code and the D-Bus error name it maps
to, so the daemons, the D-Bus layer and ``vmclientctl`` agree on one taxonomy.

Anything that is *not* a ``VMClientError`` is a bug: the CLI prints a traceback
and exits with :data:`EXIT_BUG`.

The exit codes (one table for ``vmclientctl`` and ``vmclient-admin``, documented
in docs/exit-codes.md; sysexits.h values where one fits):

====  ==================================================================
0     done
1     the operation failed (a refused request, a failed VM operation)
64    usage: a bad command line or argument (argparse's own errors too)
65    the repository's data failed a check (integrity, replay, rollback)
66    a named input does not exist (no repository at ``--repo``)
69    a service or lock is not available now (libvirtd, a held lock)
70    a bug in vmclient: a traceback was printed; please report it
75    held back, try again later
77    permission denied (a start refused by policy)
78    configuration: a config file or the admin's key directory is wrong
130   interrupted (Ctrl-C)
====  ==================================================================
"""

from __future__ import annotations

from typing import Any, ClassVar

DBUS_ERROR_PREFIX = "org.vmclient.VMClient1.Error."

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 64  # sysexits EX_USAGE
EXIT_DATAERR = 65  # sysexits EX_DATAERR
EXIT_NOINPUT = 66  # sysexits EX_NOINPUT
EXIT_BUG = 70  # sysexits EX_SOFTWARE (argparse's own 2 is mapped to EXIT_USAGE)
EXIT_TEMPFAIL = 75  # sysexits EX_TEMPFAIL
EXIT_CONFIG = 78  # sysexits EX_CONFIG
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE
EXIT_NOPERM = 77  # sysexits EX_NOPERM

# the table above, for the manual pages (vmclient.manpage)
CODE_MEANINGS: tuple[tuple[int, str], ...] = (
    (0, "done"),
    (EXIT_ERROR, "the operation failed (a refused request, a failed VM operation)"),
    (EXIT_USAGE, "usage: a bad command line or argument"),
    (EXIT_DATAERR, "the repository's data failed a check (integrity, replay, rollback)"),
    (EXIT_NOINPUT, "a named input does not exist (no repository at --repo)"),
    (EXIT_UNAVAILABLE, "a service or lock is not available now (the system bus, a daemon, "
                       "libvirtd, a held lock)"),
    (EXIT_BUG, "a bug in vmclient: a traceback was printed; please report it"),
    (EXIT_TEMPFAIL, "held back, try again later"),
    (EXIT_NOPERM, "permission denied"),
    (EXIT_CONFIG, "configuration: a config file or the admin's key directory is wrong"),
    (130, "interrupted (Ctrl-C)"),
)


class VMClientError(Exception):
    """{}"""

    exit_code: int = EXIT_ERROR
    dbus_name: ClassVar[str] = DBUS_ERROR_PREFIX + "Failed"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.args = args

    @property
    def message(self) -> str:
        template = (type(self).__doc__ or "{}").strip()
        try:
            return template.format(*self.args)
        except (IndexError, KeyError):
            return " ".join(str(a) for a in self.args) or template

    def __str__(self) -> str:
        return self.message


class ConfigError(VMClientError):
    """{}: {}: {}"""

    exit_code = EXIT_CONFIG
    dbus_name = DBUS_ERROR_PREFIX + "Config"

    def __init__(self, path: object, key: str, problem: str) -> None:
        super().__init__(str(path), key or "(file)", problem)
        self.path = str(path)
        self.key = key
        self.problem = problem


class UsageError(VMClientError):
    """{}"""

    exit_code = EXIT_USAGE
    dbus_name = DBUS_ERROR_PREFIX + "InvalidArgs"


class NotFound(VMClientError):
    """{}"""

    exit_code = EXIT_NOINPUT
    dbus_name = DBUS_ERROR_PREFIX + "NotFound"


class PermissionDenied(VMClientError):
    """Permission denied: {}"""

    exit_code = EXIT_NOPERM
    dbus_name = DBUS_ERROR_PREFIX + "PermissionDenied"


class ServiceUnavailable(VMClientError):
    """{} is not available: {}"""

    exit_code = EXIT_UNAVAILABLE
    dbus_name = DBUS_ERROR_PREFIX + "Unavailable"


class HypervisorError(VMClientError):
    """libvirt: {}"""

    dbus_name = DBUS_ERROR_PREFIX + "Hypervisor"


class HypervisorUnavailable(ServiceUnavailable):
    """The hypervisor (libvirtd at {}) is not available: {}. Is libvirtd running?"""


class VMNotFound(VMClientError):
    """No such VM: {!r}"""

    dbus_name = DBUS_ERROR_PREFIX + "VMNotFound"


class VMOperationFailed(VMClientError):
    """VM {!r}: {} failed: {}"""

    dbus_name = DBUS_ERROR_PREFIX + "VMOperationFailed"


class VMOperationTimeout(VMOperationFailed):
    """VM {!r}: {} did not finish within {:.1f} s"""

    dbus_name = DBUS_ERROR_PREFIX + "Timeout"


class RemoteError(VMClientError):
    """{}"""

    def __init__(self, dbus_name: str, text: str) -> None:
        super().__init__(text)
        self.remote_name = dbus_name
        self.exit_code = exit_code_for(dbus_name)


def exit_code_for(dbus_name: str) -> int:
    """The CLI exit code of the error a daemon replied with (by its D-Bus name)."""
    todo: list[type[VMClientError]] = [VMClientError]
    while todo:
        cls = todo.pop()
        if cls.dbus_name == dbus_name:
            return cls.exit_code
        todo.extend(cls.__subclasses__())
    return EXIT_ERROR
