# ruff: noqa: ASYNC240  (blocking checks in tests are fine)
"""Business and private zones: running guests on their own bridges, and no traffic across.

What this shows: (1) each running VM's NIC is a tap on its zone's bridge and on no
other; (2) libvirt's forward rules for each bridge reject new connections into
it; (3) real IPv4 traffic: endpoints in network namespaces, plugged into each
bridge with veth pairs, reach their own zone but not the other one, while IP
forwarding is on (so routing alone would carry the packets) and the refusal is
the firewall's ICMP reject; (4) each guest's tap is bound to libvirt's
clean-traffic nwfilter, whose bridge rules drop frames from that tap with any
source MAC but the VM's.  What it does not show: traffic from inside the
guests themselves (firmware-only guests have no IP stack here, so neither a
spoofed frame nor the IP the filter learns can be produced), IPv6 (the zones
have no IPv6 addresses), or traffic to the host's own addresses.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from fixtures_virt import URI
from provision_env import image_bytes, ipv4, need_tools, provision_env

from testlib import run
from vmclient.provision.network import host_address

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools("ip", "iptables", "ebtables", "ping")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(args, check=check)


@contextlib.contextmanager
def endpoints(prefix: str, specs: dict[str, tuple[str, str, str]]) -> Iterator[None]:
    """Network namespaces ``name -> (bridge, address/24, gateway)``, each on a veth."""
    made = []
    try:
        for name, (bridge, addr, gw) in specs.items():
            ns, host_end = f"{prefix}-{name}", f"{prefix}{name}"
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", host_end, "master", bridge, "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", gw)
        yield
    finally:
        for ns in made:
            sh("ip", "netns", "del", ns, check=False)


def ebtables_chain(chain: str) -> str:
    """``ebtables -t nat -L chain``, again while libvirt still writes the chain (its
    nwfilter thread; under load, after the VM started): ebtables-nft then finds it
    "incompatible" for a moment."""
    deadline = time.monotonic() + 20
    while True:
        r = sh("ebtables", "-t", "nat", "-L", chain, check=False)
        if r.returncode == 0 or "incompatible" not in r.stderr or time.monotonic() > deadline:
            assert r.returncode == 0, r.stderr
            return r.stdout
        time.sleep(0.2)


def _mac(text: str) -> str:
    """ebtables prints MACs without leading zeros (52:54:0:…); libvirt with them."""
    return ":".join(f"{int(b, 16):02x}" for b in text.split(":"))


def ping(prefix: str, src: str, dst: str, tries: int = 1, *,
         refused: bool = False) -> subprocess.CompletedProcess[str]:
    """One echo request per try until one is answered (``refused``: until one is refused,
    as the firewall's ICMP reject says); new bridge ports need a moment to forward."""
    for _ in range(tries):
        r = sh("ip", "netns", "exec", f"{prefix}-{src}", "ping", "-n", "-c", "1", "-W", "1",
               dst, check=False)
        if r.returncode == 0 or (refused and "Unreachable" in r.stdout):
            break
        time.sleep(0.5)
    return r


async def test_zones_are_isolated(tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        await env.dc.publish(f"{env.prefix}-img", image_bytes(4))
        blank = tmp_path / "blank.qcow2"
        sh("qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M")
        prov = env.provisioner()
        biz = await prov.install(env.recipe(tmp_path, "biz"))
        prv = await prov.install(env.recipe(tmp_path, "prv", kind="private",
                                            image=f'qcow2 = "{blank}"'))
        await prov.start(biz.name)
        await prov.start(prv.name)
        zones = env.cfg.networks.zones()

        # (1) each running guest's tap is on its zone's bridge, and only there
        conn = libvirt.open(URI)
        taps = {}
        try:
            for vm, zone in ((biz.name, "business"), (prv.name, "private")):
                live = ET.fromstring(conn.lookupByName(vm).XMLDesc(0))
                nics = live.findall("devices/interface")
                assert len(nics) == 1
                assert nics[0].find("source").get("network") == zones[zone].network
                tap = nics[0].find("target").get("dev")
                other = zones["private" if zone == "business" else "business"].bridge
                assert tap in sh("ip", "-o", "link", "show", "master", zones[zone].bridge).stdout
                assert tap not in sh("ip", "-o", "link", "show", "master", other).stdout
                taps[tap] = nics[0].find("mac").get("address")
            # (4) anti-spoofing: the filter is bound to each tap and enforced on the bridge
            bound = {b.portDev(): b.filterName() for b in conn.listAllNWFilterBindings()}
        finally:
            conn.close()
        for tap, mac in taps.items():
            assert bound.get(tap) == "clean-traffic", bound
            rules = ebtables_chain(f"libvirt-I-{tap}")
            drop = [ln for ln in rules.splitlines() if ln.endswith("-j DROP") and "-s !" in ln]
            assert drop and _mac(drop[0].split("-s ! ")[1].split()[0]) == mac, rules

        # (2) libvirt's forward rules reject new connections into each bridge
        fwi = sh("iptables", "-S", "LIBVIRT_FWI").stdout
        for z in zones.values():
            assert f"-o {z.bridge} -j REJECT" in fwi, fwi
            assert f"-d {z.subnet} -o {z.bridge} -m conntrack --ctstate RELATED,ESTABLISHED" \
                   f" -j ACCEPT" in fwi, fwi

        # (3) traffic: same zone passes, across zones is rejected
        assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
        b, p = zones["business"], zones["private"]
        spec = {"b1": (b.bridge, ipv4(b.subnet, 10), host_address(b)),
                "b2": (b.bridge, ipv4(b.subnet, 11), host_address(b)),
                "p1": (p.bridge, ipv4(p.subnet, 10), host_address(p)),
                "p2": (p.bridge, ipv4(p.subnet, 11), host_address(p))}
        with endpoints(env.prefix, spec):
            for src, dst in (("b1", ipv4(b.subnet, 11)), ("p1", ipv4(p.subnet, 11)),
                             ("b2", host_address(b)), ("p2", host_address(p))):
                r = ping(env.prefix, src, dst, tries=20)
                assert r.returncode == 0, (src, dst, r.stdout)
            for src, dst in (("b1", ipv4(p.subnet, 10)), ("p2", ipv4(b.subnet, 11))):
                r = ping(env.prefix, src, dst, tries=3, refused=True)
                assert r.returncode != 0, r.stdout
                assert "Unreachable" in r.stdout, r.stdout  # the firewall's reject, not a timeout
        for vm in (biz.name, prv.name):
            await prov.remove(vm)
