"""The nbdkit Python plugin of a streamed restore: one disk of a snapshot, read-only.

Run by provd (:mod:`.stream`) as::

    nbdkit --foreground --readonly --unix SOCKET --pidfile PIDFILE \\
        python .../vmclient/provision/nbdplugin.py spec=SPEC

(``--foreground``: the chunk source's thread is started before nbdkit would fork.)
``SPEC`` is a :class:`~.streamcore.StreamSpec`.  The plugin opens the repository
as provd does (:func:`.receiver.open_datacenter`: the device's own account and
credentials), unwraps the VM's data key with the device key, loads the store's
index and answers each ``pread`` from :class:`~.streamsource.ChunkSource`:
every chunk verified exactly as a full restore verifies it.  This module holds
no logic of its own: it only translates nbdkit's callbacks.
"""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

API_VERSION = 2

_config: dict[str, str] = {}
_opened: dict[str, Any] = {}  # "source": the ChunkSource
_lock = threading.Lock()


def _nbdkit() -> Any:
    """nbdkit's own module: there only when nbdkit runs this file."""
    import nbdkit  # type: ignore[import-not-found]

    return nbdkit


def thread_model() -> int:
    return int(_nbdkit().THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key != "spec":
        raise ValueError(f"unknown parameter {key!r} (the plugin takes spec=FILE)")
    _config[key] = value


def config_complete() -> None:
    if "spec" not in _config:
        raise ValueError("spec=FILE is required")
    # nbdkit loads this file as a script, not as part of the package
    from vmclient.provision.streamplugin import open_source

    _opened["source"] = open_source(Path(_config["spec"]))


def open(readonly: bool) -> int:
    return 1


def get_size(h: int) -> int:
    return int(_opened["source"].size)


def can_write(h: int) -> bool:
    return False


def can_multi_conn(h: int) -> bool:
    return True  # read-only: every connection sees the same bytes


def is_rotational(h: int) -> bool:
    return False


def pread(h: int, buf: Any, offset: int, flags: int) -> None:
    try:
        buf[:] = _opened["source"].pread(offset, len(buf))
    except Exception as exc:
        _nbdkit().debug(f"vmclient stream: read of {len(buf)} at {offset} failed: {exc}")
        _nbdkit().set_error(errno.EIO)
        raise


def unload() -> None:
    with _lock:
        if "source" in _opened:
            _opened.pop("source").close()
