"""The CPU profile probe on the real libvirtd: what it picks starts, and it probes once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_virt import URI, open_libvirt

from testlib import need
from vmclient.provision import cpuprobe
from vmclient.virt import libvirt as virt

pytestmark = pytest.mark.integration


def test_probed_profile_starts_provds_domain_and_is_cached(tmp_path: Path) -> None:
    need(__import__("shutil").which("qemu-system-x86_64") is not None,
         "qemu-system-x86 is not installed")
    open_libvirt().close()
    cache = tmp_path / "cpu-profile.json"
    calls: list[str] = []

    def start(uri: str, xml: str) -> str | None:
        calls.append(xml)
        return virt.try_transient(uri, xml)

    first = cpuprobe.cached_probe(URI, cache, start)
    assert calls, "nothing was probed"
    # every refused rung really does not start; the chosen one does
    for refused, error in first.refused:
        assert error, refused
    assert virt.try_transient(URI, cpuprobe.probe_xml(first.profile, "vmct-cpuprobe")) is None
    assert json.loads(cache.read_text())["cpu_mode"] == first.profile.cpu_mode

    def must_not_start(_uri: str, _xml: str) -> str | None:
        raise AssertionError("probed again although the cache answers for this host")

    assert cpuprobe.cached_probe(URI, cache, must_not_start) == first

    stale = json.loads(cache.read_text())
    stale["key"] = "another boot"
    cache.write_text(json.dumps(stale))
    calls.clear()
    assert cpuprobe.cached_probe(URI, cache, start).profile == first.profile
    assert calls, "a cache of another boot or QEMU version was trusted"
