"""Find the CPU profile this host runs VMs with, by starting one as provd would.

``python -m vmclient.provision.cpuprobe`` starts ``domain_xml()`` output (a tiny
VM without disks: their LUKS secrets are provd's business, the CPU and the
machine are what is probed) as a transient domain, one rung of
:mod:`vmclient.virt.cpu`'s ladder after the other, and prints the first profile
that runs, with the ``provision.toml`` lines that select it.  The answer is
cached per boot and per libvirt/QEMU version (``--cache``), so a test suite
probes once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import HypervisorError
from ..host.files import write_atomic
from ..virt import libvirt as virt
from ..virt.cpu import LAPTOP, CPUProfile, next_rung
from .domainxml import DiskBinding, domain_xml
from .spec import Devices, Disk, Image, Recipe, Sync

log = logging.getLogger(__name__)
DEFAULT_CACHE = Path("/run/vmclient/cpu-profile.json")
PROBE_NAME = "vmclient-cpuprobe"
_UUID = "00000000-0000-4000-8000-00000000c9b0"

Starter = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class Probe:
    profile: CPUProfile
    refused: tuple[tuple[CPUProfile, str], ...] = ()  # the rungs that did not start, and why

    def as_dict(self) -> dict[str, object]:
        return {**self.profile.as_dict(),
                "refused": [{**p.as_dict(), "error": e} for p, e in self.refused]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Probe:
        def profile(x: dict[str, Any]) -> CPUProfile:
            return CPUProfile(str(x["domain_type"]), str(x["cpu_mode"]),
                              tuple(str(f) for f in x["cpu_disable"]))
        return cls(profile(d), tuple((profile(r), str(r["error"]))
                                     for r in d.get("refused") or []))


def probe_xml(profile: CPUProfile, name: str = PROBE_NAME) -> str:
    """What provd would define for a small VM, with ``profile``, without its disks."""
    recipe = Recipe(path="(probe)", name=name, kind="private", description="",
                    image=Image(qcow2=PurePosixPath("/dev/null")), vcpus=1, memory_mib=64,
                    firmware="bios", disks=(Disk("system", "system", 1),), zone="none",
                    mac="", power="pause", sync=Sync(), devices=Devices())
    xml = domain_xml(recipe, uuid=_UUID, cpu=profile,
                     disks={"system": DiskBinding(PurePosixPath("/dev/null"), _UUID)})
    dom = ET.fromstring(xml)
    devices = dom.find("devices")
    assert devices is not None
    for disk in devices.findall("disk"):
        devices.remove(disk)
    return ET.tostring(dom, encoding="unicode")


def probe(uri: str, start: Starter = virt.try_transient) -> Probe:
    """Walk the ladder from the laptop's profile down until a domain runs."""
    refused: list[tuple[CPUProfile, str]] = []
    profile: CPUProfile | None = LAPTOP
    while profile is not None:
        error = start(uri, probe_xml(profile, f"{PROBE_NAME}-{os.getpid()}"))
        if error is None:
            return Probe(profile, tuple(refused))
        log.info("CPU profile %s does not start: %s", profile.describe(), error.strip())
        refused.append((profile, error.strip()))
        profile = next_rung(refused[-1][0], error)
    tried = "; ".join(f"{p.describe()}: {e}" for p, e in refused)
    raise HypervisorError(f"no VM starts on this host with any CPU profile ({tried})")


def host_key(uri: str) -> str:
    """What the answer depends on: this boot, libvirt's and QEMU's versions, the CPU."""
    parts = [uri, *map(str, virt.versions(uri))]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/cpuinfo"):
        try:
            parts.append(Path(path).read_text(encoding="utf-8", errors="replace")
                         .split("\n\n")[0])
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def read_cache(cache: Path, key: str | None = None) -> Probe | None:
    """The probe cached in ``cache`` (for host ``key``, if given); None: missing, damaged
    or for another host key."""
    try:
        d = json.loads(cache.read_text(encoding="utf-8"))
        if key is not None and d.get("key") != key:
            return None
        return Probe.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def cached_probe(uri: str, cache: Path | None = DEFAULT_CACHE,
                 start: Starter = virt.try_transient) -> Probe:
    """:func:`probe`, answered from ``cache`` when it was written for this host key."""
    key = host_key(uri) if cache is not None else ""
    if cache is not None:
        cached = read_cache(cache, key)
        if cached is not None:
            return cached
    result = probe(uri, start)
    if cache is not None:
        try:
            write_atomic(cache, (json.dumps({"key": key, **result.as_dict()}) + "\n").encode(),
                         mode=0o644, dir_mode=None)
        except OSError as exc:
            log.warning("cannot cache the CPU profile in %s: %s", cache, exc.strerror)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m vmclient.provision.cpuprobe",
        description="Start a VM as vmclient-provd would, with the host's CPU first, and "
                    "print the first domain type and CPU mode that runs.")
    ap.add_argument("--uri", default="qemu:///system", help="libvirt URI (%(default)s)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                    help="answer from / write to this file (%(default)s)")
    ap.add_argument("--no-cache", action="store_true", help="probe even if cached")
    ap.add_argument("--json", action="store_true", help="one JSON object")
    args = ap.parse_args(argv)
    try:
        result = cached_probe(args.uri, None if args.no_cache else args.cache)
    except HypervisorError as exc:
        print(f"cpuprobe: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    p = result.profile
    print(f"CPU profile: {p.describe()}")
    for refused, error in result.refused:
        print(f"  not {refused.describe()}: {(error.splitlines() or ['?'])[0][:200]}")
    print("provision.toml:")
    print(f'  domain_type = "{p.domain_type}"\n  cpu_mode = "{p.cpu_mode}"')
    print("  cpu_disable = [" + ", ".join(f'"{f}"' for f in p.cpu_disable) + "]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
