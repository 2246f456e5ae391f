"""A domain's state as vmclient lists it (provd's List and ListVMs, the shell's bar):
libvirt's, except that a domain whose QEMU is still starting is "starting", not
"paused" (libvirt reports it paused, reason starting-up, until its CPUs run)."""

from __future__ import annotations

import libvirt

from vmclient.virt.domains import DomState, state_word


def test_a_domain_being_started_is_starting_not_paused() -> None:
    assert state_word(DomState.PAUSED, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP) == "starting"


def test_a_paused_domain_is_paused_whoever_paused_it() -> None:
    for reason in (libvirt.VIR_DOMAIN_PAUSED_USER, libvirt.VIR_DOMAIN_PAUSED_IOERROR,
                   libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_UNKNOWN):
        assert state_word(DomState.PAUSED, reason) == "paused"


def test_the_other_states_are_libvirts_in_lower_case() -> None:
    assert state_word(DomState.RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED) == "running"
    # starting-up is a paused reason only: the same number means something else elsewhere
    assert state_word(DomState.SHUTOFF, 11) == "shutoff"
    assert state_word(DomState.PMSUSPENDED, 0) == "pmsuspended"
