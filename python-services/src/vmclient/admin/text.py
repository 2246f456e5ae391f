"""How ``vmclient-admin`` shows sizes and times: binary units, UTC."""

from __future__ import annotations

import time

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_size(n: float) -> str:
    """``61440 MiB`` → ``60.0 GiB``: the largest unit that keeps the number at least 1."""
    for unit in UNITS:
        if abs(n) < 1024 or unit == UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def utc(t: int) -> str:
    """A Unix time as ``YYYY-MM-DD HH:MM UTC`` (0: never)."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "never"


class Output:
    """``--quiet``: no progress and no confirmations; results (listings, keys, codes, the
    server-side setup) and errors are still written."""

    quiet = False


def info(text: str) -> None:
    """A confirmation or a note: suppressed by ``--quiet``."""
    if not Output.quiet:
        print(text, flush=True)
