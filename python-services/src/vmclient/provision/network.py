"""The two zones' libvirt networks, as a pure function of the configuration.

Design (docs/vm-recipes.md, "Isolation"): each zone is its own libvirt NAT
network with its own bridge and IPv4 subnet.  libvirt's firewall rules for a
NAT network accept forwarded traffic *into* its bridge only for connections
that are already established (``LIBVIRT_FWI``: ``ctstate RELATED,ESTABLISHED``,
otherwise reject), and *out of* it only from its own subnet (``LIBVIRT_FWO``).
A new connection from a business guest to a private guest (or back) crosses
from one bridge to the other and is therefore rejected, while both zones reach
the outside world through NAT.  There is no route between them that does not
go through those rules; nothing bridges the two bridges.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from .config import Zone


def network_xml(zone: Zone) -> str:
    net = ipaddress.IPv4Network(zone.subnet)
    hosts = list(net.hosts())
    host, first, last = hosts[0], hosts[len(hosts) // 2], hosts[-1]
    root = ET.Element("network")
    ET.SubElement(root, "name").text = zone.network
    ET.SubElement(root, "forward", mode="nat")
    ET.SubElement(root, "bridge", name=zone.bridge, stp="on", delay="0")
    ip = ET.SubElement(root, "ip", address=str(host), netmask=str(net.netmask))
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", start=str(first), end=str(last))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def host_address(zone: Zone) -> str:
    """The bridge's own address (the guests' gateway)."""
    return str(next(ipaddress.IPv4Network(zone.subnet).hosts()))
