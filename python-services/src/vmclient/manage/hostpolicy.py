"""Is a host update due, and may it be downloaded now?  A pure function of facts.

The facts come from the catalog's ``host`` section (signed), the laptop's own record
(running release, a ``host-update`` order, what it installed or failed to install) and
the daemons' sensors: UPower's ``OnBattery`` and NetworkManager's ``Metered`` (or the
configured metered interfaces), as the Synchronizer reads them (:mod:`..sync.peers`).
repository-format.md §8.9.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..store.documents import HostSection
from ..store.hostformat import compare

NONE, WAIT, INSTALL, REFUSE = "none", "wait", "install", "refuse"


def bucket(device: str) -> int:
    """The device's rollout bucket, 0…99: stable, and spread evenly over the fleet."""
    return int(hashlib.sha256(device.encode("ascii")).hexdigest()[:8], 16) % 100


@dataclass(frozen=True)
class Ordered:
    """A verified ``host-update`` order not yet done."""

    release: str
    downgrade: bool = False
    seq: int = 0
    maintenance: str = ""  # this device's window for the restart into it ("" the channel's)


@dataclass(frozen=True)
class HostFacts:
    device: str
    channel: str  # the channel this laptop follows
    running: str  # the release it runs
    on_battery: bool
    metered: bool
    ordered: Ordered | None = None
    installed: str = ""  # installed into the other slot, waiting for a restart
    failed: frozenset[str] = frozenset()  # installs that failed: not retried by the channel


@dataclass(frozen=True)
class HostDecision:
    action: str  # none | wait | install | refuse
    release: str = ""
    reason: str = ""
    source: str = ""  # "order" or "channel <name>"


def decide(section: HostSection | None, f: HostFacts) -> HostDecision:
    """What to do about host updates now (see the module's docstring)."""
    host = section or HostSection()
    if f.ordered is not None:
        release, source = f.ordered.release, "order"
    else:
        ch = host.channels.get(f.channel)
        if ch is None:
            return HostDecision(NONE, reason=f"channel {f.channel} offers no release")
        if bucket(f.device) >= ch.rollout:
            return HostDecision(NONE, ch.release, f"not in the {ch.rollout} % rollout of "
                                f"{ch.release} on {f.channel}", f"channel {f.channel}")
        release, source = ch.release, f"channel {f.channel}"
    if host.find(release) is None:
        return HostDecision(REFUSE, release, f"release {release} is not published", source)
    newer = compare(release, f.running)
    if newer == 0:
        return HostDecision(NONE, release, f"running {release} already", source)
    if release == f.installed:
        return HostDecision(NONE, release, f"{release} is installed: restart to run it", source)
    if newer < 0:
        if f.ordered is None:
            return HostDecision(NONE, release, f"{source} offers {release}, older than the "
                                f"running {f.running}: no downgrade without an order", source)
        if not f.ordered.downgrade:
            return HostDecision(REFUSE, release, f"{release} is older than the running "
                                f"{f.running}: a downgrade needs a signed host-update order "
                                "with downgrade=yes", source)
    if f.ordered is None and release in f.failed:
        return HostDecision(NONE, release, f"installing {release} failed before", source)
    if f.on_battery:
        return HostDecision(WAIT, release, "on battery: waiting for AC", source)
    if f.metered:
        return HostDecision(WAIT, release, "on a metered link: waiting for an unmetered one",
                            source)
    return HostDecision(INSTALL, release, f"{source}: {f.running} -> {release}", source)
