"""Helpers shared by the test tiers (importable as ``testlib``)."""

from __future__ import annotations

import os
from pathlib import Path

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
