"""Shared pytest set-up: where the sources are, and the tier switches."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testlib import SERVICES, system_tests_enabled

sys.path.insert(0, str(SERVICES / "src"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--system", action="store_true", default=False,
                     help="also run tests/system (boots a whole host image under QEMU)")


@pytest.hookimpl(tryfirst=True)  # (before xdist reads the groups)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The worker groups of ``--dist loadgroup`` (pytest-xdist, two workers: ``make test``).
    With the system tier: the system tests, and everything else; without it: the
    integration tests, and the static ones (unit, layer).  Each group runs in its order on
    a worker of its own: the booted hosts (busy under TCG) or the unit tests (CPU) beside
    tests that mostly wait on daemons and guests; no two integration tests ever share the
    machine's libvirtd, networks or system bus at once."""
    system = system_tests_enabled(config)
    integration = Path(__file__).resolve().parent / "integration"
    for item in items:
        if system:
            group = "system" if item.get_closest_marker("system") else "rest"
        else:
            group = "integration" if item.path.is_relative_to(integration) else "static"
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """What a test recorded as its ``summary`` property (``record_property``: the system
    tests' tables of step times), shown whether it passed or not, also from xdist workers."""
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", ()):
                if name == "summary" and report.when == "call":
                    terminalreporter.write_line(f"\n{report.nodeid}:\n{value}")
