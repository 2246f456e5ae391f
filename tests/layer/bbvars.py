"""A small reader for plain bitbake assignments in our own recipes.

It understands what meta-vmclient's recipes use (``=``, ``+=``, ``?=``,
``:append``-free assignments, backslash continuations); it is not a bitbake
parser and refuses what it does not understand instead of guessing.
"""

from __future__ import annotations

import re
from pathlib import Path

_ASSIGN = re.compile(r'^(?P<name>[A-Za-z0-9_${}:.\-/]+)\s*(?P<op>\?\?=|\?=|\+=|=\+|\.=|=\.|:=|=)\s*"(?P<rest>.*)$')


def assignments(path: Path, raw: bool = False) -> list[tuple[str, str, str]]:
    """(name, operator, value) for every double-quoted assignment, in order;
    ``raw`` keeps the value as written (continuations joined, backslashes
    and spacing kept), for values with ``\\n`` separators."""
    result = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = _ASSIGN.match(lines[i])
        i += 1
        if not m:
            continue
        value = m.group("rest")
        while not value.rstrip().endswith('"'):
            if i >= len(lines):
                raise ValueError(f"{path}: unterminated assignment to {m.group('name')}")
            value = value.rstrip().removesuffix("\\") + " " + lines[i]
            i += 1
        value = value.rstrip()[:-1]
        if not raw:
            value = " ".join(value.replace("\\", " ").split())
        result.append((m.group("name"), m.group("op"), value))
    return result


def words(path: Path, name: str) -> list[str]:
    """All words assigned or appended to ``name`` (``=`` resets)."""
    out: list[str] = []
    for var, op, value in assignments(path):
        if var != name:
            continue
        if op in {"=", ":=", "?=", "??="}:
            out = []
        out.extend(value.split())
    return out


def value(path: Path, name: str) -> str:
    found = [v for var, _op, v in assignments(path) if var == name]
    if len(found) != 1:
        raise ValueError(f"{path}: expected one assignment to {name}, found {len(found)}")
    return found[0]


def lines(path: Path, name: str) -> list[list[str]]:
    """The words of each ``\\n``-separated line of the one assignment to
    ``name`` (VOLATILE_BINDS style)."""
    found = [v for var, _op, v in assignments(path, raw=True) if var == name]
    if len(found) != 1:
        raise ValueError(f"{path}: expected one assignment to {name}, found {len(found)}")
    return [line.split() for line in found[0].split("\\n") if line.replace("\\", " ").split()]
