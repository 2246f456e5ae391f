"""Fixtures of the integration tier: real libvirtd, dbus-daemon, umockdev."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# vmclient-admin encrypts its keys under a passphrase; tests give it as scripts do
os.environ.setdefault("VMCLIENT_ADMIN_PASSPHRASE", "integration-test passphrase")

from fixtures_bus import PrivateSystemBus, private_system_bus
from fixtures_sshd import sshd  # noqa: F401  (the fixture, for every test)
from fixtures_udev import SimulatedLaptop
from fixtures_virt import TCG_SLOWDOWN, Domains, LibvirtdLink, domains, probed_profile
from powerd_harness import Logind, PowerDaemon


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).resolve().parent
    # Guests run under TCG on this host (start-daemons probed it): every limit scales.
    cached = probed_profile()
    slow = cached is not None and not cached.accelerated
    for item in items:
        if here in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if slow:
                marker = item.get_closest_marker("timeout")
                limit = marker.args[0] if marker and marker.args else \
                    float(config.getini("timeout") or 300)
                item.add_marker(pytest.mark.timeout(limit * TCG_SLOWDOWN))


@pytest.fixture
def system_bus() -> Iterator[PrivateSystemBus]:
    with private_system_bus() as bus:
        yield bus


@pytest.fixture
def logind(system_bus: PrivateSystemBus) -> Logind:
    mock = system_bus.spawn_mock("logind_vmclient", {"InhibitDelayMaxUSec": 5_000_000})
    return Logind(system_bus, mock)


@pytest.fixture
def vms() -> Iterator[Domains]:
    with domains(f"vmct-{uuid.uuid4().hex[:6]}") as d:
        yield d


@pytest.fixture
def libvirtd_link(tmp_path: Path) -> Iterator[LibvirtdLink]:
    """libvirtd as the daemon under test sees it, to be cut and restored."""
    link = LibvirtdLink(tmp_path)
    yield link
    link.close()


@pytest.fixture
def laptop() -> Iterator[SimulatedLaptop]:
    lap = SimulatedLaptop()
    yield lap
    lap.close()


@pytest.fixture
def powerd(system_bus: PrivateSystemBus, logind: Logind, laptop: SimulatedLaptop, vms: Domains,
           tmp_path: Path) -> Iterator[Callable[..., PowerDaemon]]:
    """Start the daemon (stopped before the test's domains are removed)."""
    started: list[PowerDaemon] = []

    def make(config: str = "", lap: SimulatedLaptop | bool | None = True, start: bool = True) -> PowerDaemon:
        prefix = f'name_prefix = "{vms.prefix}-"\n'
        config = (config.replace("[vms]\n", "[vms]\n" + prefix, 1) if "[vms]\n" in config
                  else "[vms]\n" + prefix + config)
        d = PowerDaemon(system_bus, laptop if lap is True else (lap or None), tmp_path, config)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        assert "Traceback" not in d.log(), d.log()

