"""Fixtures of the integration tier: real libvirtd, dbus-daemon, umockdev."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# vmclient-admin encrypts its keys under a passphrase; tests give it as scripts do
os.environ.setdefault("VMCLIENT_ADMIN_PASSPHRASE", "integration-test passphrase")

from fixtures_bus import PrivateSystemBus, private_system_bus
from fixtures_s3 import seaweedfs, seaweedfs_cluster  # noqa: F401  (the fixtures, for every test)
from fixtures_sshd import sshd  # noqa: F401  (the fixture, for every test)
from fixtures_udev import SimulatedLaptop
from fixtures_virt import TCG_SLOWDOWN, Domains, LibvirtdLink, domains, probed_profile
from powerd_harness import Logind, PowerDaemon, PowerDaemons

from testlib import ROOT


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


LIBVIRTD_PID = Path("/run/libvirtd.pid")
LIBVIRTD_LOG = Path("/var/log/libvirt/libvirtd.log")


def _libvirtd_pid() -> int | None:
    try:
        pid = int(LIBVIRTD_PID.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


@pytest.fixture(autouse=True)
def libvirtd_outlives_the_test() -> Iterator[None]:
    """A libvirtd that dies during a test fails that test, with the end of libvirtd's log,
    and is started again, as a laptop's systemd restarts it: the tests after it still get
    their verdicts instead of "libvirtd does not answer" each."""
    before = _libvirtd_pid()
    yield
    if before is None or _libvirtd_pid() == before:
        return
    try:
        tail = LIBVIRTD_LOG.read_text(errors="replace").splitlines()[-8:]
    except OSError:
        tail = []
    restart = subprocess.run([str(ROOT / "scripts" / "start-daemons")], capture_output=True,
                             text=True, check=False)
    pytest.fail(f"libvirtd (pid {before}) died during this test; the end of {LIBVIRTD_LOG}:\n"
                + "\n".join(tail) + "\nstart-daemons after it: "
                + (restart.stdout + restart.stderr).strip(), pytrace=False)


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
def run_powerd(system_bus: PrivateSystemBus, logind: Logind,
               tmp_path: Path) -> Iterator[PowerDaemons]:
    """``run_powerd(config, laptop)`` starts vmclient-powerd; every daemon started is stopped
    when the test ends and its log checked.  Request it after the fixtures whose things the
    daemon uses (the laptop, the domains): it is then torn down before them."""
    daemons = PowerDaemons(system_bus, tmp_path)
    yield daemons
    daemons.close()


@pytest.fixture
def powerd(system_bus: PrivateSystemBus, logind: Logind, laptop: SimulatedLaptop, vms: Domains,
           libvirtd_link: LibvirtdLink, tmp_path: Path) -> Iterator[Callable[..., PowerDaemon]]:
    """Start the daemon on the test's domains and laptop.  When the test ends, its domains
    go first (the stop has nothing to save: a managed save of every VM, 2-5 s a test, is
    not what these tests check; test_shutdown_saves_every_vm… does), then each daemon
    stops, before ``libvirtd_link`` closes: a daemon connected through the link does not
    see libvirtd go away as it stops (it would wait 30 s for libvirtd to come back)."""
    daemons = PowerDaemons(system_bus, tmp_path)

    def make(config: str = "", lap: SimulatedLaptop | bool | None = True, start: bool = True) -> PowerDaemon:
        prefix = f'name_prefix = "{vms.prefix}-"\n'
        config = (config.replace("[vms]\n", "[vms]\n" + prefix, 1) if "[vms]\n" in config
                  else "[vms]\n" + prefix + config)
        return daemons(config, laptop if lap is True else (lap or None), start)

    yield make
    try:
        daemons.settle()
        vms.cleanup()
    finally:
        daemons.close()
