"""``vmclientctl`` on a system bus where the daemon it needs is not running: the message
names the daemon, its bus name, and what to run.  (No bus at all: tests/unit/cli.)"""

from __future__ import annotations

import pytest
from fixtures_bus import PrivateSystemBus

from testlib import vmclientctl


@pytest.mark.parametrize(("args", "daemon", "bus_name"), [
    (("vm", "list"), "vmclient-provd", "org.vmclient.VMClient1.Provisioning"),
    (("sync", "status"), "vmclient-syncd", "org.vmclient.VMClient1.Sync"),
    (("power", "status"), "vmclient-powerd", "org.vmclient.VMClient1"),
])
def test_a_daemon_that_is_not_running_is_named_with_what_to_run(
        system_bus: PrivateSystemBus, args: tuple[str, ...], daemon: str, bus_name: str) -> None:
    r = vmclientctl(*args, env=system_bus.env())
    assert r.returncode == 69, r.stderr
    assert f"{daemon} ({bus_name} on the system bus)" in r.stderr, r.stderr
    assert f"systemctl start {daemon}" in r.stderr and f"journalctl -u {daemon}" in r.stderr
