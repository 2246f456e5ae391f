"""What powerd reads of libvirt to know what to pause: in as few calls as a laptop going to
sleep can afford."""

from __future__ import annotations

from collections.abc import Callable

from . import domains
from .hypervisor import Hypervisor


async def power_policy(hv: Hypervisor, uuid: str, name: str) -> str | None:
    """The power policy in a domain's metadata (live, for a running one), unvalidated."""
    return await hv.on_domain(uuid, "read the power policy", domains.power_policy_of, name)


async def running_policies(hv: Hypervisor, keep: Callable[[str], bool]
                           ) -> list[tuple[str, str, str | None]]:
    """(UUID, name, power policy from the metadata) of every running domain whose name
    ``keep`` accepts: one listing (a domain's name and UUID come with it) and one metadata
    read per domain kept, nothing for the others."""
    return await hv.call(lambda conn: domains.running_policies(conn, keep),
                         what="list running domains", limit=30)
