"""The agent's installer (``manage/provisioning.py``) meets a VM whose QEMU is starting.

An ``assign`` or ``restore`` order with ``start`` that finds its VM here already starts it
unless it runs.  provd lists a VM "starting" while its QEMU starts (libvirt: paused,
reason starting-up); a Start of it then is one too many: libvirt holds the domain's first
start and refuses the second (the domain is active), and the order failed with that.

Real vmclient-provd on a private system bus, real libvirtd and QEMU: the VM is held in its
start by a second disk whose NBD socket never answers (:meth:`EchoGuests.starting`)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dbus_fast.aio import MessageBus
from echo_guest import EchoGuests, echo_guests
from fixtures_bus import PrivateSystemBus
from provd_harness import ProvDaemon
from provision_env import set_lease
from stream_env import recipe_text

from testlib import need
from vmclient.manage.provisioning import ProvdInstaller

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need(os.geteuid() == 0, "needs root (libvirt)")


@pytest.fixture
def guests() -> Iterator[EchoGuests]:
    with echo_guests(f"vmco-{uuid.uuid4().hex[:6]}") as g:
        yield g


@pytest.fixture
def provd(system_bus: PrivateSystemBus, tmp_path: Path) -> Iterator[ProvDaemon]:
    # under a lease: a Start of a business VM gets past the key gate to libvirt
    set_lease(tmp_path / "manage", days=14)
    with ProvDaemon(system_bus, tmp_path) as d:
        yield d


async def test_an_order_to_start_a_vm_whose_qemu_is_starting_does_not_start_it_again(
        system_bus: PrivateSystemBus, provd: ProvDaemon, guests: EchoGuests) -> None:
    """A ``restore`` and an ``assign`` order, each with ``start``, run again (after a
    crash of the agent, or sent twice) while the VM's QEMU starts: each is done at once,
    its report saying the VM was here already, and provd was asked no Start (every Start
    here is logged by provd: it could only fail)."""
    with guests.starting("starting", "business", 1, "S") as vm:
        bus = await MessageBus(bus_address=system_bus.address).connect()
        try:
            installer = ProvdInstaller(bus)
            assert await installer.restore(vm, "laptop-a", start=True) == \
                f"{vm} was restored already"
            assigned = await installer.assign(vm, recipe_text(vm), start=True)
            assert assigned.startswith(f"{vm} was installed already ("), assigned
        finally:
            bus.disconnect()
        assert "Start for" not in provd.log(), provd.log()
