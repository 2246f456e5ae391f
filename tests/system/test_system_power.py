"""vmclient-powerd on a real host: lid, logind, S3, shutdown, the bus, the CLI.

Scenario order matters (one booted host per session): status, lid, suspend, then the
journal check.  Shutdown and boot (every VM managed-saved by powerd, restored at boot)
are checked across the reboots of tests/system/test_system_storage.py, which come last
on the session's host.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import harness
import pytest

from testlib import need

pytestmark = [pytest.mark.system, pytest.mark.timeout(1200)]

PERMISSION_DENIED = 77
MANAGED = ("vmc-default", "vmc-pause")  # policy pause (default and explicit)
USER_PAUSED = "vmc-user"
IGNORED = "vmc-ignore"


def status(m: harness.Machine, user: str | None = None) -> dict:
    r = m.ssh("vmclientctl power status --json", user=user, check=True)
    return json.loads(r.stdout)


def wait_state(m: harness.Machine, want: dict[str, str], timeout: float = 60) -> None:
    cond = " && ".join(f"[ \"$(virsh domstate {n})\" = {s!r} ]" for n, s in want.items())
    try:
        m.wait_until(cond, timeout=timeout)
    except harness.HarnessError:
        pytest.fail(f"domains not {want} within {timeout} s: {harness.domstates(m)}")


def paused_before_s3(window: list[str], names: list[str]) -> None:
    """Each name has a libvirt 'Suspended' event in the kernel log window
    before the kernel's 'PM: suspend entry'."""
    entry = next((i for i, line in enumerate(window) if "PM: suspend entry" in line), None)
    assert entry is not None, "no 'PM: suspend entry' in the kernel log:\n" + "\n".join(window)
    before = window[:entry]
    for name in names:
        hit = [line for line in before if f"'{name}'" in line and "Suspended" in line]
        assert hit, (f"{name} was not paused before the host entered S3:\n"
                     + "\n".join(line for line in window if "vmclient-test" in line or "PM:" in line))


def not_paused_by_daemon(window: list[str], name: str) -> None:
    hits = [line for line in window if f"'{name}'" in line and "Suspended" in line]
    assert not hits, f"{name} (policy ignore) was paused: {hits}"


@pytest.fixture(scope="module")
def vms(powerd: harness.Machine, nested_vms: dict[str, str | None]) -> dict[str, str | None]:
    return nested_vms


def test_status_over_the_system_bus_as_root_and_unprivileged_user(
    powerd: harness.Machine, vms: dict
) -> None:
    root = status(powerd)
    for key in ("lid", "power_source", "battery_present", "battery_percent", "docked",
                "state", "paused_by_us", "owns_lid", "lid_action"):
        assert key in root, f"{key} missing from {root}"
    assert root["lid"] == "open"
    assert root["state"] == "running"
    assert root["paused_by_us"] == []
    assert root["owns_lid"] is True

    user = powerd.cfg.unprivileged_user
    need(user is not None, "this image has no unprivileged user to log in as")
    assert user is not None
    alice = status(powerd, user=user)
    assert alice["lid"] == "open" and alice["state"] == "running"
    # the unprivileged user may read, but not pause
    r = powerd.ssh("vmclientctl power pause-all", user=user)
    assert r.rc == PERMISSION_DENIED, (r.rc, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert all(s == "running" for s in harness.domstates(powerd).values())


def test_daemon_holds_sleep_delay_and_lid_block_inhibitors(powerd: harness.Machine) -> None:
    out = powerd.ssh("systemd-inhibit --list --no-pager --no-legend", check=True).stdout
    mine = [line for line in out.splitlines() if "vmclient" in line.lower()]
    assert any("sleep" in line and "delay" in line for line in mine), out
    assert any("handle-lid-switch" in line and "block" in line for line in mine), out


def test_pause_all_and_resume_all_as_root(powerd: harness.Machine, vms: dict) -> None:
    powerd.ssh("vmclientctl power pause-all", check=True)
    wait_state(powerd, {**{n: "paused" for n in MANAGED}, IGNORED: "running"}, timeout=60)
    assert {p["name"] for p in status(powerd)["paused_by_us"]} >= set(MANAGED)
    powerd.ssh("vmclientctl power resume-all", check=True)
    wait_state(powerd, {n: "running" for n in vms}, timeout=60)


def _suspend_cycle(m: harness.Machine, trigger: Callable[[], object],
                   after_wake: Callable[[], object] | None) -> None:
    """Pause one VM as a user, trigger sleep, check every VM the daemon
    manages was paused before S3, wake the host, then check the same VMs run
    again and the user-paused one is still paused."""
    assert m.events is not None and m.qmp is not None
    m.ssh(f"virsh -q suspend {USER_PAUSED}", check=True)
    klog_mark = harness.kernel_mark(m)
    mark = m.events.mark()
    trigger()
    m.events.wait_for("SUSPEND", timeout=120, after=mark)
    m.qmp.execute("system_wakeup")
    m.events.wait_for("WAKEUP", timeout=30, after=mark)
    if after_wake:
        m.wait_until("true", timeout=60)
        after_wake()
    log = harness.kernel_log_since(m, klog_mark)
    paused_before_s3(log, list(MANAGED))
    not_paused_by_daemon(log, IGNORED)
    wait_state(m, {**{n: "running" for n in MANAGED}, IGNORED: "running",
                   USER_PAUSED: "paused"}, timeout=90)
    m.wait_until("vmclientctl power status --json | grep -q '\"state\": \"running\"'",
                 timeout=60)
    st = status(m)
    assert st["paused_by_us"] == [], st
    # the user's own pause is the user's business
    assert harness.domstates(m)[USER_PAUSED] == "paused"
    m.ssh(f"virsh -q resume {USER_PAUSED}", check=True)


def test_lid_close_pauses_every_vm_before_s3_and_lid_open_resumes_them(
    powerd: harness.Machine, vms: dict
) -> None:
    _suspend_cycle(powerd, lambda: harness.lid(powerd, "close"),
                   after_wake=lambda: harness.lid(powerd, "open"))
    lid = powerd.ssh(
        "busctl get-property org.freedesktop.login1 /org/freedesktop/login1 "
        "org.freedesktop.login1.Manager LidClosed", check=True).stdout.strip()
    assert lid == "b false"
    assert status(powerd)["lid"] == "open"


def test_systemctl_suspend_without_lid_pauses_and_resumes_the_same_way(
    powerd: harness.Machine, vms: dict
) -> None:
    _suspend_cycle(powerd, lambda: powerd.ssh("systemctl suspend --no-block", check=True),
                   after_wake=None)


def test_daemon_journal_has_no_traceback(powerd: harness.Machine) -> None:
    r = powerd.ssh("journalctl -b all -u vmclient-powerd --no-pager -o cat", check=True)
    assert r.stdout.strip(), "vmclient-powerd logged nothing"
    assert "Traceback" not in r.stdout, r.stdout[-4000:]
