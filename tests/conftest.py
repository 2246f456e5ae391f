"""Shared pytest set-up: where the sources are, and the tier switches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testlib import SERVICES

sys.path.insert(0, str(SERVICES / "src"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--system", action="store_true", default=False,
                     help="also run tests/system (boots a whole host image under QEMU)")
