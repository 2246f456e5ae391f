"""Errors of the repository store, split by who is at fault (STYLE.md §4).

* :class:`LocalSyncError` — a mistake or a limit on this side (bad argument, a
  local file missing, a lock held by someone else).  May be retried.
* :class:`RemoteIntegrityError` — data read from the repository failed an AEAD,
  id, type, signature, version-order or structure check.  It names the object
  type, the object id and the path it was read from.  Never retried, never
  repaired automatically: the server (or someone on it) is suspect.
* :class:`UnsupportedVersion` — an object says it is of a format version this
  client does not know.  Refused, never guessed at.
"""

from __future__ import annotations

from ..errors import DBUS_ERROR_PREFIX, EXIT_UNAVAILABLE, VMClientError

EXIT_INTEGRITY = 65  # sysexits EX_DATAERR


class StoreError(VMClientError):
    """{}"""

    dbus_name = DBUS_ERROR_PREFIX + "Store"


class LocalSyncError(StoreError):
    """{}"""

    dbus_name = DBUS_ERROR_PREFIX + "LocalSync"


class LockHeld(LocalSyncError):
    """Repository lock {} is held by {} since {} (stale after {} s)"""

    exit_code = EXIT_UNAVAILABLE
    dbus_name = DBUS_ERROR_PREFIX + "LockHeld"


class ObjectNotFound(StoreError):
    """Repository object not found: {}"""

    dbus_name = DBUS_ERROR_PREFIX + "ObjectNotFound"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class RemoteIntegrityError(StoreError):
    """Repository integrity check failed for {} {!r} at {}: {}. Not retried: the stored data is not what was written."""  # noqa: E501

    exit_code = EXIT_INTEGRITY
    dbus_name = DBUS_ERROR_PREFIX + "RemoteIntegrity"

    def __init__(self, obj_type: str, obj_id: str, path: str, problem: str) -> None:
        super().__init__(obj_type, obj_id, path or "(no path)", problem)
        self.obj_type = obj_type
        self.obj_id = obj_id
        self.path = path
        self.problem = problem


class UnknownSigner(RemoteIntegrityError):
    """Repository integrity check failed for {} {!r} at {}: {}. Not retried: the stored data is not what was written."""  # noqa: E501

    def __init__(self, obj_type: str, obj_id: str, path: str, untrusted_signer: str) -> None:
        super().__init__(obj_type, obj_id, path, f"signed by unknown key {untrusted_signer}")
        self.untrusted_signer = untrusted_signer


class UnsupportedVersion(RemoteIntegrityError):
    """{} {!r} at {} has {}; this client refuses it (upgrade vmclient if the repository is newer)."""  # noqa: E501

    dbus_name = DBUS_ERROR_PREFIX + "UnsupportedVersion"
