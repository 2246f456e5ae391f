"""The booted host itself: systemd, logind, udev, the lid, KVM inside, the bus."""

from __future__ import annotations

import harness
import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(1200)]


def test_host_boots_to_ssh_with_systemd_running(host: harness.Machine) -> None:
    state = host.wait_system_running()
    failed = host.ssh("systemctl --failed --no-legend --plain", check=True).stdout
    assert state == "running", f"system {state}; failed units:\n{failed}"
    assert host.ssh("readlink /proc/1/exe", check=True).stdout.strip().endswith("systemd")


def test_logind_sees_the_uinput_lid_as_a_power_switch(host: harness.Machine) -> None:
    r = host.ssh(
        "for d in /dev/input/event*; do udevadm info -q property \"$d\" | "
        "grep -q '^ID_INPUT_SWITCH=1' && udevadm info \"$d\"; done",
        check=True,
    )
    assert "Lid Switch" in host.ssh("cat /sys/class/input/*/name", check=True).stdout
    assert "power-switch" in r.stdout
    lid = host.ssh(
        "busctl get-property org.freedesktop.login1 /org/freedesktop/login1 "
        "org.freedesktop.login1.Manager LidClosed", check=True).stdout.strip()
    assert lid == "b false"
    assert harness.lid(host, "state") == "open"


def test_logind_config_drop_in_from_data_is_in_effect(host: harness.Machine) -> None:
    r = host.ssh(
        "busctl get-property org.freedesktop.login1 /org/freedesktop/login1 "
        "org.freedesktop.login1.Manager InhibitDelayMaxUSec", check=True)
    assert r.stdout.split() == ["t", "10000000"]


def test_vmclient_bus_policy_and_units_are_installed(host: harness.Machine) -> None:
    host.ssh(
        "test -f /usr/share/dbus-1/system.d/org.vmclient.VMClient1.conf && "
        "test -f /usr/lib/systemd/system/vmclient-powerd.service && "
        "test -f /usr/share/dbus-1/interfaces/org.vmclient.VMClient1.Power.xml && "
        "getent group vmclient && systemctl is-enabled vmclient-powerd",
        check=True,
    )
    exec_start = host.ssh("systemctl show -P ExecStart vmclient-powerd", check=True).stdout
    assert "/vmclient-powerd" in exec_start and "@BINDIR@" not in exec_start
    if host.cfg.kind == "debian-test-host":
        assert "/opt/vmclient/bin/vmclient-powerd" in exec_start
    if host.cfg.unprivileged_user:
        members = host.ssh("getent group vmclient", check=True).stdout
        assert host.cfg.unprivileged_user not in members


def test_kvm_works_inside_the_host_for_firmware_only_vms(
    host: harness.Machine, nested_vms: dict[str, str | None]
) -> None:
    states = harness.domstates(host)
    assert {n: states.get(n) for n in nested_vms} == {n: "running" for n in nested_vms}
    for name in nested_vms:
        xml = host.ssh(f"virsh dumpxml {name}", check=True).stdout
        assert "type='kvm'" in xml
    # A pause/resume round trip straight through libvirt works, and its
    # lifecycle events reach the kernel log (what the S3 ordering checks read).
    mark = harness.kernel_mark(host)
    host.ssh("virsh -q suspend vmc-pause && virsh -q resume vmc-pause", check=True)
    assert harness.domstates(host)["vmc-pause"] == "running"
    host.wait_until("dmesg | grep -q \"vmclient-test: .*'vmc-pause': Resumed\"", timeout=30)
    log = [line for line in harness.kernel_log_since(host, mark) if "vmc-pause" in line]
    assert "Suspended" in log[0] and "Resumed" in log[-1], log


def test_host_enters_s3_and_wakes_on_qmp_system_wakeup(host: harness.Machine) -> None:
    """The machine's S3 path works before any daemon takes part: a direct
    write to /sys/power/state, QMP SUSPEND, system_wakeup, WAKEUP."""
    assert host.qmp is not None and host.events is not None
    mark = host.events.mark()
    host.ssh("systemd-run --quiet --no-block sh -c 'sleep 1; echo mem > /sys/power/state'",
             check=True)
    host.events.wait_for("SUSPEND", timeout=90, after=mark)
    assert host.qmp_status() == "suspended"
    host.qmp.execute("system_wakeup")
    host.events.wait_for("WAKEUP", timeout=30, after=mark)
    host.wait_until("true", timeout=60)
    assert host.qmp_status() == "running"
