"""Which VMs the datacenter's listing offers for restore (provd's ``ListRestorable``)."""

from __future__ import annotations

from vmclient.provision.restorable import candidates

VMS = "devices/d1/vms"
ME = "w" * 16


def test_a_vm_is_offered_only_with_a_latest_pointer_and_a_key_wrapped_for_this_device():
    paths = [f"{VMS}/crm/latest", f"{VMS}/crm/keys/{ME}", f"{VMS}/crm/snapshots/0000000001",
             f"{VMS}/crm/store/packs/ab/abcd",
             f"{VMS}/hr/latest", f"{VMS}/hr/keys/{'o' * 16}",  # another device's key only
             f"{VMS}/new/keys/{ME}",  # no snapshot yet
             f"{VMS}/Bad_Name/latest", f"{VMS}/Bad_Name/keys/{ME}",  # not a VM name
             "devices/d2/vms/other/latest", f"devices/d2/vms/other/keys/{ME}",
             f"{VMS}/odd/store/latest", f"{VMS}/odd/keys/{ME}/x"]  # not where they belong
    assert candidates(paths, VMS, ME) == ["crm"]


def test_names_come_sorted_and_once():
    paths = [f"{VMS}/{vm}/{leaf}" for vm in ("web", "crm") for leaf in
             ("latest", f"keys/{ME}", "latest")]
    assert candidates(paths, VMS, ME) == ["crm", "web"]
