"""Unit tests import the sources in place (the top-level tests/conftest.py may do this too)."""

from __future__ import annotations

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "python-services" / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
