"""vmclient-powerd's view of the running VMs, kept from libvirt's events: a VM started after
the daemon, a policy changed in the metadata, and events lost while libvirtd was away."""

from __future__ import annotations

import libvirt
from powerd_harness import wait_for

from vmclient.virt.libvirt import POWER_NS

RUNNING, PAUSED = libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_PAUSED


def set_policy(dom: libvirt.virDomain, policy: str) -> None:
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, f"<power policy='{policy}'/>",
                    "vmclient", POWER_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)


def policy_read(d, name: str, policy: str) -> None:
    wait_for(lambda: f"power policy of {name} read: {policy!r}" in d.log(), 10,
             f"powerd told that {name} is {policy}")


def sleep(logind, vms) -> None:
    logind.prepare_for_sleep(True)
    wait_for(lambda: not logind.holds("sleep", "delay"), 10, "the sleep lock released")


def test_a_vm_started_after_powerd_is_paused_with_its_policy(powerd, logind, vms):
    vms.create("first")
    d = powerd()
    later = vms.create("later")
    left = vms.create("left", policy="ignore")
    policy_read(d, left.name(), "ignore")
    policy_read(d, later.name(), None)
    sleep(logind, vms)
    assert vms.state(vms.names[0]) == PAUSED and later.state()[0] == PAUSED
    assert left.state()[0] == RUNNING
    assert set(d.paused_by_us()) == {vms.names[0], later.name()}


def test_a_policy_changed_in_the_metadata_is_honoured(powerd, logind, vms):
    a = vms.create("a")
    b = vms.create("b", policy="ignore")
    d = powerd()
    set_policy(a, "ignore")
    set_policy(b, "pause")
    policy_read(d, a.name(), "ignore")
    policy_read(d, b.name(), "pause")
    sleep(logind, vms)
    assert a.state()[0] == RUNNING and b.state()[0] == PAUSED
    assert set(d.paused_by_us()) == {b.name()}


def test_what_happened_while_libvirtd_was_away_is_listed_again(powerd, logind, vms,
                                                                libvirtd_link):
    a = vms.create("a")
    gone = vms.create("gone")
    d = powerd(f'[libvirt]\nuri = "{libvirtd_link.uri}"\n')
    libvirtd_link.cut()  # no events reach powerd from here on
    wait_for(lambda: "to libvirtd lost" in d.log(), 10, "the connection lost")
    later = vms.create("later")
    set_policy(a, "ignore")
    gone.destroy()
    libvirtd_link.listen()
    wait_for(lambda: "reconnected -> " in d.log(), 30, "the reconnection handled")
    sleep(logind, vms)
    assert later.state()[0] == PAUSED and a.state()[0] == RUNNING
    assert set(d.paused_by_us()) == {later.name()}
