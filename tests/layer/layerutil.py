"""Shared helpers for the layer checks (marker ``layer``).

A missing tool fails the test under CI (``CI=true``) and skips it, with the
reason, elsewhere: CI must never pass by not running a check.
"""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from types import ModuleType

from testlib import need

REPO = Path(__file__).resolve().parents[2]
LAYER = REPO / "meta-vmclient"
SERVICES = REPO / "python-services"

# Install hint shown when a tool is missing.
INSTALL_HINT = "pip install -r conf/requirements-layer.txt"


def missing(what: str) -> None:
    """Fail under CI, skip elsewhere (:func:`testlib.need`)."""
    need(False, f"{what} is not installed ({INSTALL_HINT})")


def require_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"Python module {name!r}")
        raise AssertionError("unreachable") from None


def require_executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        # The venv's console scripts sit next to its interpreter even when
        # the venv is not activated.
        import sys

        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
        missing(f"executable {name!r}")
    return str(path)


def recipes() -> list[Path]:
    found = sorted(LAYER.rglob("*.bb")) + sorted(LAYER.rglob("*.bbappend"))
    assert found, f"no recipes under {LAYER}"
    return found
