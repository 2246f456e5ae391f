"""Which domain type and CPU model a host can run: the profile and the probe's ladder.

Laptops run business and private VMs with KVM and the host's own CPU
(``host-passthrough``): the guest sees every feature, live migration is not a
concern.  Some hosts refuse that: KVM under a hypervisor (a paravirtual KVM,
nested virtualisation) may reject a model-specific register QEMU sets for a
feature the host CPU reports, and QEMU aborts at start (``failed to set MSR
0x10a``: the ``arch-capabilities`` feature on AMD EPYC guests).  The probe
(:mod:`vmclient.provision.cpuprobe`) starts a domain as the product would and
walks down this ladder until one runs:

1. KVM, ``host-passthrough``;
2. KVM, ``host-passthrough`` with the feature behind the refused MSR disabled;
3. KVM, ``host-model``;
4. TCG (``type="qemu"``), ``maximum`` (QEMU's ``-cpu max``): slow, but it runs.

This module is pure: the profile value and the next rung after a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOMAIN_TYPES = ("kvm", "qemu")
CPU_MODES = ("host-passthrough", "host-model", "maximum")
_FEATURE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")

# MSRs a host's KVM may refuse, by the CPU feature that makes QEMU write them.
_MSR_FEATURES = {0x10A: "arch-capabilities"}
_MSR_ERROR = re.compile(r"failed to set MSR (0x[0-9a-fA-F]+)")


@dataclass(frozen=True)
class CPUProfile:
    """A libvirt domain type and ``<cpu>`` element: what ``domain_xml()`` emits."""

    domain_type: str = "kvm"
    cpu_mode: str = "host-passthrough"
    cpu_disable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.domain_type not in DOMAIN_TYPES:
            raise ValueError(f"domain type {self.domain_type!r} is not one of "
                             + ", ".join(DOMAIN_TYPES))
        if self.cpu_mode not in CPU_MODES:
            raise ValueError(f"CPU mode {self.cpu_mode!r} is not one of " + ", ".join(CPU_MODES))
        if self.domain_type == "qemu" and self.cpu_mode != "maximum":
            raise ValueError(f"CPU mode {self.cpu_mode!r} needs KVM; "
                             "TCG (domain type 'qemu') runs 'maximum'")
        for name in self.cpu_disable:
            if not _FEATURE.fullmatch(name):
                raise ValueError(f"{name!r} is not a CPU feature name")

    @property
    def accelerated(self) -> bool:
        return self.domain_type == "kvm"

    def describe(self) -> str:
        text = f"{self.domain_type} {self.cpu_mode}"
        return text + "".join(f" -{f}" for f in self.cpu_disable)

    def as_dict(self) -> dict[str, object]:
        return {"domain_type": self.domain_type, "cpu_mode": self.cpu_mode,
                "cpu_disable": list(self.cpu_disable)}


LAPTOP = CPUProfile()
TCG = CPUProfile("qemu", "maximum")


def refused_feature(error: str) -> str | None:
    """The CPU feature whose MSR the host's KVM refused, if the error names one we know."""
    m = _MSR_ERROR.search(error)
    return _MSR_FEATURES.get(int(m.group(1), 16)) if m else None


def next_rung(failed: CPUProfile, error: str) -> CPUProfile | None:
    """The profile to try after ``failed`` did not start with ``error``; None: nothing runs."""
    if failed.domain_type == "qemu":
        return None
    if failed.cpu_mode == "host-passthrough":
        feature = refused_feature(error)
        if feature is not None and feature not in failed.cpu_disable:
            return CPUProfile("kvm", "host-passthrough", (*failed.cpu_disable, feature))
        return CPUProfile("kvm", "host-model")
    return TCG
