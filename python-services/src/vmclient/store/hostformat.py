"""The catalog's ``host`` section: host update bundles, channels and rollouts (pure).

A host update bundle (a RAUC bundle) is stored like an image version: content-addressed
encrypted chunks under ``images/host/`` (:data:`HOST_IMAGE`), its manifest pinned by the
catalog.  The catalog lists it in ``host.bundles`` (not among the VM images) with the
*release* string RAUC's manifest carries, and ``host.channels`` say which release each
channel offers to which share of the fleet (repository-format.md, "Host updates").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .orders import MAINTENANCE_RE, RELEASE_RE, window_problem

__all__ = ["CHANNELS", "HOST_IMAGE", "MAINTENANCE_RE", "RELEASE_RE", "HostChannel", "compare",
           "window_problem"]

HOST_IMAGE = "host"  # the reserved image name whose chunk tree holds the bundles
CHANNELS = ("stable", "testing")


def release_key(release: str) -> tuple[tuple[int, ...], int, str]:
    """Sort key of a release: numeric parts, then a suffix (``2.0-rc1`` < ``2.0`` < ``2.0+1``)."""
    m = re.match(r"^([0-9.]+)(?:([-+~])(.*))?$", release)
    if m is None:
        raise ValueError(f"not a release: {release!r}")
    nums = tuple(int(p) for p in m.group(1).split("."))
    nums = nums + (0,) * (4 - len(nums))
    order = {None: 1, "-": 0, "~": 0, "+": 2}[m.group(2)]
    return nums, order, m.group(3) or ""


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as release ``a`` is older than, equal to or newer than ``b``."""
    ka, kb = release_key(a), release_key(b)
    return (ka > kb) - (ka < kb)


@dataclass(frozen=True)
class HostChannel:
    release: str
    rollout: int  # percent of the fleet, 0…100
    maintenance: str = ""  # HH:MM-HH:MM: laptops restart into the update then ("" never)
