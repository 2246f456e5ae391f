"""Each of our interfaces has one introspection XML: the guard takes the methods' signatures
from it, and each object's introspection names its out-arguments from it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vmclient.dbus import names
from vmclient.dbus.guard import (
    Member,
    install_method_guard,
    shipped_interface,
    shipped_methods,
)
from vmclient.errors import DBUS_ERROR_PREFIX


def _object(iface: str) -> Any:
    from vmclient.power.service import PowerInterface
    from vmclient.provision.display import DisplayInterface
    from vmclient.provision.service import ProvisioningInterface
    from vmclient.sync.service import ManagementInterface, SyncInterface

    return {names.POWER_IFACE: lambda: PowerInterface(SimpleNamespace(properties=dict)),
            names.PROVISION_IFACE: ProvisioningInterface,
            names.DISPLAY_IFACE: DisplayInterface,
            names.SYNC_IFACE: SyncInterface,
            names.MANAGE_IFACE: ManagementInterface}[iface]()


def test_the_guard_reads_the_signatures_of_the_shipped_xml():
    sync = shipped_methods(names.SYNC_IFACE)
    assert sync["Verify"] == ("ss", "(stt)") and sync["ListSnapshots"] == ("s", "a(suxtsb)")
    assert shipped_methods(names.POWER_IFACE) == {"PauseAll": ("", "as"), "ResumeAll": ("", "as"),
                                                  "PauseVM": ("s", "as"), "ResumeVM": ("s", "as"),
                                                  "DelayPause": ("", "h")}
    assert shipped_methods(names.DISPLAY_IFACE)["OpenDisplay"] == ("s", "h")


def test_a_guarded_member_missing_from_the_xml_is_refused_at_start():
    async def handler(_args: list[Any]) -> list[Any]:
        return []

    with pytest.raises(KeyError, match="PauseSome"):
        install_method_guard(None, names.POWER_PATH, names.POWER_IFACE,  # type: ignore[arg-type]
                             names.POLKIT_ACTION_POWER_MANAGE,
                             {"PauseSome": Member("pausing some VMs", handler)})


@pytest.mark.parametrize("iface", [names.POWER_IFACE, names.PROVISION_IFACE,
                                   names.DISPLAY_IFACE, names.SYNC_IFACE, names.MANAGE_IFACE])
def test_each_objects_methods_are_those_of_its_xml(iface):
    node = _object(iface).introspect()
    assert node.name == iface
    runtime = {m.name: (m.in_signature, m.out_signature, [a.name for a in m.out_args])
               for m in node.methods}
    shipped = {m.name: (m.in_signature, m.out_signature, [a.name for a in m.out_args])
               for m in shipped_interface(iface).methods}
    assert runtime == shipped and shipped


@pytest.mark.parametrize("iface", [names.POWER_IFACE, names.PROVISION_IFACE,
                                   names.DISPLAY_IFACE, names.SYNC_IFACE, names.MANAGE_IFACE])
def test_each_objects_properties_are_those_of_its_xml(iface):
    node = _object(iface).introspect()
    runtime = {p.name: (p.signature, p.access.value) for p in node.properties}
    shipped = {p.name: (p.signature, p.access.value)
               for p in shipped_interface(iface).properties}
    assert runtime == shipped


def test_one_error_prefix_under_the_bus_name():
    assert DBUS_ERROR_PREFIX == names.BUS_NAME + ".Error."
    assert not hasattr(names, "ERROR_PREFIX")
