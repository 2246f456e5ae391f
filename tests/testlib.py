"""Helpers shared by the test tiers (importable as ``testlib``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "python-services"
DATA = SERVICES / "data"
# The interfaces' introspection XML (package data; installed in /usr/share/dbus-1/interfaces)
INTERFACES = SERVICES / "src" / "vmclient" / "dbus" / "xml"


def in_ci() -> bool:
    """CI sets CI=true (GitHub, GitLab and our .ci/run); 1 and yes count too."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


IN_CI = in_ci()

# The sources first; the installed package where there are none (ptest on the image).
PYTHONPATH = os.pathsep.join(filter(None, (str(SERVICES / "src"), os.environ.get("PYTHONPATH"))))


def run(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
        user: int | None = None, groups: Sequence[int] = (), timeout: float | None = 60,
        check: bool = False, input: str | None = None,
        stdin: int | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A child process as every test runs one: its output captured as text, its time
    bounded (``timeout`` seconds; scale it for guests), ``env`` over this process's
    environment with the sources on PYTHONPATH; with ``user``, through setpriv as that
    uid (and gid), in the supplementary ``groups`` only."""
    args = [str(a) for a in argv]
    if user is not None:
        args = ["setpriv", f"--reuid={user}", f"--regid={user}",
                f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
                *args]
    return subprocess.run(args, env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, check=check,
                          input=input, stdin=stdin, cwd=cwd)


def vmclientctl(*args: str, env: Mapping[str, str] | None = None, user: int | None = None,
                groups: Sequence[int] = (), timeout: float | None = 60,
                stdin: int | None = None) -> subprocess.CompletedProcess[str]:
    """``vmclientctl ARGS`` from the sources, run as :func:`run` runs a child."""
    return run([sys.executable, "-m", "vmclient.cli.main", *args], env=env, user=user,
               groups=groups, timeout=timeout, stdin=stdin)


def system_tests_enabled(config: pytest.Config) -> bool:
    """Whether this run includes the system tier: ``--system`` or VMCLIENT_SYSTEM_TESTS."""
    try:
        opt = bool(config.getoption("--system"))
    except ValueError:  # the option is not registered (tests/conftest.py lacks it)
        opt = False
    return opt or os.environ.get("VMCLIENT_SYSTEM_TESTS", "") not in ("", "0")


def need(condition: bool, reason: str) -> None:
    """The one rule for a missing prerequisite, in every tier: skip it outside CI (with
    the reason), fail in CI, where it must be there.  CI never passes by not running."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


# A minimal business recipe for the catalog image "office", as an assign order carries it.
OFFICE_RECIPE = """format = 1
name = "office"
kind = "business"
vcpus = 1
memory_mib = 512

[image]
catalog = "office"

[[disks]]
name = "system"
role = "system"

[network]
zone = "business"

[power]
policy = "pause"
"""


def stop_processes(procs: Sequence[subprocess.Popen[Any]], grace: float = 5) -> None:
    """SIGTERM each process, SIGKILL it if it has not ended ``grace`` seconds later."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def edid_block(width_px: int, height_px: int, width_mm: int, height_mm: int,
               width_cm: int | None = None, height_cm: int | None = None) -> bytes:
    """An EDID base block with one detailed timing (the preferred mode), its size in mm and
    the block's size in cm (the mm / 10 unless given): a panel for vmclient.shell.hidpi."""
    block = bytearray(128)
    block[0:8] = bytes([0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0])
    block[21] = width_mm // 10 if width_cm is None else width_cm
    block[22] = height_mm // 10 if height_cm is None else height_cm
    dtd = bytearray(18)
    dtd[0:2] = (24_000).to_bytes(2, "little")  # pixel clock / 10 kHz: a timing
    dtd[2], dtd[4] = width_px & 0xFF, (width_px >> 8) << 4
    dtd[5], dtd[7] = height_px & 0xFF, (height_px >> 8) << 4
    dtd[12], dtd[13] = width_mm & 0xFF, height_mm & 0xFF
    dtd[14] = (width_mm >> 8) << 4 | (height_mm >> 8)
    block[54:72] = dtd
    return bytes(block)
