"""Directory listings over an SFTP :class:`~.sftp_client.Connection`, many at once.

A pack store has a directory per leading byte of its packs' names; listed one
directory at a time, each cost four round trips through ssh and sshd (OPENDIR,
READDIR, the READDIR that reaches its end, CLOSE).  :func:`listdirs` sends the
requests of each step together (every OPENDIR, then a READDIR of each directory
not at its end yet, then every CLOSE): a walk pays a few round trips per level of
the tree, not a few per directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import sftp_codec as c
from .sftp_client import Connection

BATCH = 32  # directories listed at once (each holds a handle on the server meanwhile)


def listdir(conn: Connection, path: str) -> list[c.Name]:
    """The entries of ``path`` ("." and ".." left out); its error status raised."""
    listing = listdirs(conn, [path])[0]
    if isinstance(listing, OSError):
        raise listing
    return listing


def listdirs(conn: Connection, paths: Sequence[str]) -> list[list[c.Name] | OSError]:
    """:func:`listdir` of each of ``paths`` (in their order), or the error status its
    listing got (a ``FileNotFoundError`` for a missing one)."""
    out: list[list[c.Name] | OSError] = []
    for first in range(0, len(paths), BATCH):
        out += _listdirs(conn, paths[first:first + BATCH])
    return out


def _listdirs(conn: Connection, paths: Sequence[str]) -> list[list[c.Name] | OSError]:
    out: list[list[c.Name] | OSError] = [[] for _ in paths]
    handles: dict[int, bytes] = {}
    for i, value in enumerate(conn.pipelined(c.OPENDIR, [c.string(p) for p in paths])):
        if isinstance(value, c.Status):
            out[i] = _status_error(value, "list", paths[i])
        elif isinstance(value, bytes):
            handles[i] = value
        else:
            raise c.MalformedAnswer(f"unexpected answer to OPENDIR: {type(value).__name__}")
    reading = dict(handles)
    while reading:
        answers = conn.pipelined(c.READDIR, [c.string(h) for h in reading.values()])
        for i, value in zip(list(reading), answers, strict=True):
            names = out[i]
            if isinstance(value, c.Status):
                if value.code != c.EOF:
                    out[i] = _status_error(value, "list", paths[i])
                del reading[i]
            elif isinstance(value, list) and isinstance(names, list):
                names += value
            else:
                raise c.MalformedAnswer(f"unexpected answer to READDIR: {type(value).__name__}")
    closed = conn.pipelined(c.CLOSE, [c.string(h) for h in handles.values()])
    for i, value in zip(handles, closed, strict=True):
        if not isinstance(value, c.Status):
            raise c.MalformedAnswer(f"unexpected answer to CLOSE: {type(value).__name__}")
        if value.code != c.OK and isinstance(out[i], list):
            out[i] = _status_error(value, "close", paths[i])
    return [[n for n in names if n.filename not in (".", "..")]
            if isinstance(names, list) else names for names in out]


def _status_error(status: c.Status, op: str, path: str) -> OSError:
    """The ``OSError`` of an error status (an OK status where an answer was due is garbage)."""
    if status.code == c.OK:
        raise c.MalformedAnswer(f"OK answered to {op} where a result was due")
    return c.status_error(status, op, path)
