"""The --system option of pytest.

pytest reads options only from the top-level conftest.py (tests/conftest.py)
and plugins, so paste this hook there (or merge it with an existing one).
tests/system/conftest.py works without it: then only VMCLIENT_SYSTEM_TESTS=1
enables the system tests.
"""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--system",
        action="store_true",
        default=False,
        help="run the system tests (tests/system): boot a whole vmclient host under QEMU",
    )
