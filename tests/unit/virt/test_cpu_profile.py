"""The CPU profile ladder: which rung follows a refused one (pure)."""

from __future__ import annotations

import pytest

from vmclient.errors import HypervisorError
from vmclient.provision import cpuprobe
from vmclient.virt.cpu import LAPTOP, TCG, CPUProfile, next_rung, refused_feature

MSR_10A = ("internal error: qemu unexpectedly closed the monitor: qemu-system-x86_64: error: "
           "failed to set MSR 0x10a to 0x69\nqemu-system-x86_64: ../../target/i386/kvm/kvm.c:"
           "3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.")


def test_refused_msr_names_its_feature() -> None:
    assert refused_feature(MSR_10A) == "arch-capabilities"
    assert refused_feature("failed to set MSR 0x1234 to 0x1") is None
    assert refused_feature("could not find capabilities for domaintype=kvm") is None


def test_ladder_passthrough_then_feature_off_then_host_model_then_tcg() -> None:
    step2 = next_rung(LAPTOP, MSR_10A)
    assert step2 == CPUProfile("kvm", "host-passthrough", ("arch-capabilities",))
    assert next_rung(step2, MSR_10A) == CPUProfile("kvm", "host-model")  # type: ignore[arg-type]
    assert next_rung(LAPTOP, "no KVM") == CPUProfile("kvm", "host-model")
    assert next_rung(CPUProfile("kvm", "host-model"), MSR_10A) == TCG
    assert next_rung(TCG, "anything") is None


@pytest.mark.parametrize("bad", [
    {"domain_type": "xen"}, {"cpu_mode": "custom"},
    {"domain_type": "qemu", "cpu_mode": "host-passthrough"},
    {"cpu_disable": ("arch capabilities; rm",)},
])
def test_invalid_profiles_are_refused(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        CPUProfile(**bad)


def scripted(answers: dict[str, str | None]):  # type: ignore[no-untyped-def]
    """A starter answering by the probe XML's domain type and CPU element."""
    seen: list[str] = []

    def start(_uri: str, xml: str) -> str | None:
        import xml.etree.ElementTree as ET
        dom = ET.fromstring(xml)
        cpu = dom.find("cpu")
        assert cpu is not None and dom.find("devices/disk") is None
        key = " ".join([dom.get("type", ""), cpu.get("mode", ""),
                        *(f"-{f.get('name')}" for f in cpu.findall("feature"))])
        seen.append(key)
        return answers.get(key, "refused")
    return start, seen


def test_probe_walks_down_until_a_domain_runs() -> None:
    start, seen = scripted({"kvm host-passthrough": MSR_10A,
                            "kvm host-passthrough -arch-capabilities": None})
    result = cpuprobe.probe("test:///", start)
    assert result.profile == CPUProfile("kvm", "host-passthrough", ("arch-capabilities",))
    assert seen == ["kvm host-passthrough", "kvm host-passthrough -arch-capabilities"]
    assert result.refused[0][0] == LAPTOP


def test_probe_falls_back_to_tcg_and_says_when_nothing_runs() -> None:
    start, seen = scripted({"qemu maximum": None})
    assert cpuprobe.probe("test:///", start).profile == TCG
    assert seen == ["kvm host-passthrough", "kvm host-model", "qemu maximum"]
    start, _ = scripted({})
    with pytest.raises(HypervisorError, match="no VM starts on this host"):
        cpuprobe.probe("test:///", start)
