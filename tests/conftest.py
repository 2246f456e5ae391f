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


@pytest.hookimpl(tryfirst=True)  # (before xdist reads the groups)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two groups for ``--dist loadgroup`` (pytest-xdist: ``make test`` with the system
    tier, see the Makefile): the system tests and everything else.  Each group runs in
    its order on a worker of its own: the booted hosts, busy under TCG, beside the rest,
    which mostly waits on daemons and guests; no two tests of the rest ever share the
    machine's libvirtd, networks or system bus at once."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group("system" if item.get_closest_marker("system")
                                                else "rest"))
