"""Hosts of their own on one machine: network namespaces, links of fixed bandwidth, CPU quotas.

A server that a real deployment runs on a separate host gets here what such a host has of
its own, the way container runtimes and network emulators give it:

* its own network namespace, joined by a veth pair to a bridge in the machine's namespace
  (the switch; the processes not on a host, e.g. the clients, the master and the S3
  gateway, reach the hosts through it), with a private address of a /24 that no route of
  the machine covers.  The namespaces have no route beyond that /24: nothing they send
  leaves the machine;
* a link of fixed bandwidth: a token bucket filter (``tc qdisc … tbf``) on both ends of
  its veth, i.e. ``mbit`` each way, full duplex, as an Ethernet port;
* its own CPU quota: a cgroup of the v1 ``cpu`` controller with a CFS quota of ``cpus``
  cores (the process is put there before it execs, so its threads all count);
* its own data directory (the caller's: a host has its own disk).

What it cannot give: CPU cores that the machine does not have (a quota only takes away),
or a disk of its own (the hosts' directories share the machine's disk).

Everything made is named after the pid of the process that made it, and removed by
:meth:`Hosts.close` (on exit, Ctrl-C included, as the ``with`` block unwinds); what a
process killed outright (SIGKILL) left behind is removed by the next one (:func:`sweep`).
Needs root, iproute2 and a kernel with network namespaces, veth, bridge, tbf and CFS
bandwidth control.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vmclient.store.locks import pid_alive

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")  # the cgroup v1 cpu controller
NETNS_DIR = Path("/run/netns")
PERIOD_US = 100_000
_made = itertools.count()
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class HostLimits:
    """What one emulated host has of its own: ``mbit`` of link each way, ``cpus`` cores
    (None: no quota)."""
    mbit: float
    cpus: float | None = None

    def describe(self) -> str:
        cpu = f", {self.cpus:g} cores" if self.cpus else ""
        return f"{self.mbit:g} Mbit/s each way{cpu}"


def unavailable() -> str | None:
    """Why hosts cannot be emulated here (None: they can)."""
    if os.geteuid() != 0:
        return "emulated hosts need root (network namespaces, tc, cgroups)"
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        return f"emulated hosts need iproute2 ({', '.join(missing)} not found)"
    if not (CPU_CGROUP / "cpu.cfs_quota_us").exists():
        return f"emulated hosts need the cgroup v1 cpu controller at {CPU_CGROUP}"
    return None


def sh(*argv: str) -> str:
    """Run an iproute2 command; its stdout, or RuntimeError with its stderr."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r.stdout


def names(pid: int, seq: int) -> tuple[str, str]:
    """The prefix of the network namespaces and cgroups, and of the links (at most 15
    characters: ``vh<pid hex><seq><role><i>``), of set ``seq`` made by ``pid``."""
    return f"vmchost-{pid}-{seq}-", f"vh{pid:x}{_BASE36[seq % 36]}"


def made_by(pid: int, prefix: str = "", link_prefix: str = "") -> list[str]:
    """The namespaces, links and cgroups of emulated hosts that process ``pid`` made (of
    the set with ``prefix`` and ``link_prefix`` only, if given)."""
    prefix = prefix or f"vmchost-{pid}-"
    links = re.compile(re.escape(link_prefix) + r"(?:b|[hn]\d+)" if link_prefix
                       else rf"vh{pid:x}[0-9a-z](?:b|[hn]\d+)")
    out = [p.name for p in NETNS_DIR.glob(f"{prefix}*")] if NETNS_DIR.exists() else []
    out += [link["ifname"] for link in json.loads(sh("ip", "-j", "link", "show") or "[]")
            if links.fullmatch(link.get("ifname", ""))]
    out += [str(p) for p in CPU_CGROUP.glob(f"{prefix}*")]
    return out


def sweep() -> list[str]:
    """Remove the namespaces, links and cgroups of processes no longer alive."""
    removed = []
    ns_re = re.compile(r"vmchost-(\d+)-")
    link_re = re.compile(r"vh([0-9a-f]+)[0-9a-z](?:b|[hn]\d+)")  # (bridge, veth ends)
    for ns in (p.name for p in NETNS_DIR.glob("vmchost-*")) if NETNS_DIR.exists() else ():
        if (m := ns_re.match(ns)) and not pid_alive(int(m[1])):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            removed.append(ns)
    for link in json.loads(sh("ip", "-j", "link", "show") or "[]"):
        name = link.get("ifname", "")
        if (m := link_re.fullmatch(name)) and not pid_alive(int(m[1], 16)):
            subprocess.run(["ip", "link", "delete", name], capture_output=True)
            removed.append(name)
    for cg in CPU_CGROUP.glob("vmchost-*"):
        if (m := ns_re.match(cg.name)) and not pid_alive(int(m[1])):
            try:
                cg.rmdir()
                removed.append(str(cg))
            except OSError:
                pass
    return removed


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.0.0.0/8 that no route or address of the machine overlaps."""
    used = []
    for r in json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = r.get("dst", "default")
        if dst[:1].isdigit():  # (not "default")
            used.append(ipaddress.ip_network(dst, strict=False))
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randint(128, 254)}.{rng.randint(1, 254)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise RuntimeError("no free 10.x.y.0/24 for the emulated hosts")


def _rmdir(cgroup: Path) -> str | None:
    """Remove a cgroup (waiting up to 5 s for the processes killed in it to be gone);
    why not, or None."""
    why = ""
    for _ in range(50):
        try:
            cgroup.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = str(exc)
            time.sleep(0.1)
    return why


@dataclass
class Host:
    """One emulated host: run a command on it with :meth:`argv`."""
    name: str
    netns: str
    ip: str
    link: str  # its veth's end in the machine's namespace (tx: to the host; rx: from it)
    cgroup: Path | None

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run in the host's namespace and cgroup (the same pid throughout: the
        shell and ``ip netns exec`` exec what follows)."""
        inner = ["ip", "netns", "exec", self.netns, *argv]
        if self.cgroup is None:
            return inner
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.cgroup / "cgroup.procs"),
                *inner]

    def link_bytes(self) -> dict[str, int]:
        """Bytes its link carried so far: ``to`` the host and ``from`` it."""
        stats = Path("/sys/class/net") / self.link / "statistics"
        return {"to": int((stats / "tx_bytes").read_text()),
                "from": int((stats / "rx_bytes").read_text())}

    def cpu_throttled(self) -> dict[str, float]:
        """How often, and for how long, the quota held its processes back so far."""
        if self.cgroup is None:
            return {"periods": 0, "throttled": 0, "throttled_s": 0.0}
        stat = dict(line.split() for line in (self.cgroup / "cpu.stat").read_text().splitlines())
        return {"periods": int(stat["nr_periods"]), "throttled": int(stat["nr_throttled"]),
                "throttled_s": int(stat["throttled_time"]) / 1e9}


class Hosts:
    """A set of emulated hosts behind one bridge; ``with Hosts(limits) as hosts:``, then
    :meth:`add` one per server.  :attr:`switch_ip` is the machine's own address on the
    bridge: a server that the hosts must reach (the master) listens there."""

    def __init__(self, limits: HostLimits) -> None:
        if why := unavailable():
            raise RuntimeError(why)
        self.limits = limits
        self.prefix, self.link_prefix = names(os.getpid(), next(_made))
        self.hosts: list[Host] = []
        self.bridge = f"{self.link_prefix}b"
        self._bridge_made = False
        self.subnet: ipaddress.IPv4Network | None = None
        self.switch_ip = ""

    def start(self) -> Hosts:
        sweep()
        self.subnet = free_subnet()
        self.switch_ip = str(self.subnet.network_address + 1)
        self._bridge_made = True  # (before: an interrupted start still removes it)
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.switch_ip}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        return self

    def add(self, name: str) -> Host:
        """A new host named ``name`` (for people: the server it runs)."""
        assert self.subnet is not None, "start() first"
        i = len(self.hosts)
        if i >= 200:
            raise RuntimeError("at most 200 emulated hosts")
        host = Host(name=name, netns=f"{self.prefix}{i}", ip=str(self.subnet.network_address + 10 + i),
                    link=f"{self.link_prefix}h{i}", cgroup=None)
        inner = f"{self.link_prefix}n{i}"
        self.hosts.append(host)  # (before: an interrupted add still removes what it made)
        sh("ip", "netns", "add", host.netns)
        sh("ip", "link", "add", host.link, "type", "veth", "peer", "name", inner,
           "netns", host.netns)
        sh("ip", "link", "set", host.link, "master", self.bridge, "up")
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", inner)
        sh("ip", "-n", host.netns, "link", "set", inner, "up")
        # the bucket: 1 ms of the rate, at least 64 KiB (a GSO segment); the queue: 50 ms
        kbit = round(self.limits.mbit * 1000)
        burst = str(max(64 << 10, kbit * 1000 // 8 // 1000))
        tbf = ["root", "tbf", "rate", f"{kbit}kbit", "burst", burst, "latency", "50ms"]
        sh("tc", "qdisc", "add", "dev", host.link, *tbf)  # to the host
        sh("tc", "-n", host.netns, "qdisc", "add", "dev", inner, *tbf)  # from it
        if self.limits.cpus:
            host.cgroup = CPU_CGROUP / host.netns  # (before: as above)
            host.cgroup.mkdir()
            (host.cgroup / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (host.cgroup / "cpu.cfs_quota_us").write_text(
                str(max(1000, round(self.limits.cpus * PERIOD_US))))
        return host

    def close(self) -> None:
        """Remove every namespace (its veth end, and so the pair, with it), qdisc, the
        bridge and every cgroup.  The caller has ended the hosts' processes."""
        errors = []
        for host in self.hosts:
            subprocess.run(["ip", "netns", "delete", host.netns], capture_output=True)
            subprocess.run(["ip", "link", "delete", host.link], capture_output=True)
            if host.cgroup is not None and (err := _rmdir(host.cgroup)):
                errors.append(f"{host.cgroup}: {err}")
        if self._bridge_made:
            subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        self.hosts.clear()
        if errors:
            raise RuntimeError(f"emulated hosts not removed: {errors}")

    def left(self) -> list[str]:
        """What of this set still exists (nothing after :meth:`close`)."""
        return made_by(os.getpid(), self.prefix, self.link_prefix)

    def __enter__(self) -> Hosts:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.close()
