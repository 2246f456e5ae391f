"""The restore page's choices and words: which VMs it offers, what a refusal says, how far
a restored VM's disk is."""

from __future__ import annotations

import time

from vmclient.shell.bar import fill_percents as percents
from vmclient.shell.restoring import (
    Offer,
    failure_text,
    fill_text,
    list_failure_text,
    offer_text,
    offers,
)

ERR = "org.vmclient.VMClient1.Error."


def test_a_vm_on_the_laptop_is_never_offered():
    rows = [("web", "0000000004", 1_700_000_000), ("crm", "0000000002", 0),
            ("home", "0000000009", 5)]  # ("home" is here)
    assert offers(rows, ["home", "other"]) == [Offer("crm", "0000000002", 0),
                                                Offer("web", "0000000004", 1_700_000_000)]


def test_rows_not_of_the_listings_type_are_left_out():
    assert offers([("crm", "1", "soon"), ("",), (), None, ("hr", "2", -3)], []) == \
        [Offer("hr", "2", 0)]


def test_the_button_says_when_the_snapshot_was_made_or_its_label():
    now = time.mktime((2026, 12, 7, 15, 0, 0, 0, 0, -1))
    today = int(time.mktime((2026, 12, 7, 9, 5, 0, 0, 0, -1)))
    earlier = int(time.mktime((2026, 12, 1, 18, 30, 0, 0, 0, -1)))
    assert offer_text(Offer("crm", "0000000003", today), now) == "Restore crm (saved today 09:05)"
    assert offer_text(Offer("crm", "0000000003", earlier), now) == \
        "Restore crm (saved Tue 01 Dec 18:30)"
    assert offer_text(Offer("crm", "0000000003", 0), now) == "Restore crm (snapshot 0000000003)"


def test_each_refusal_says_what_to_do():
    assert failure_text("crm", ERR + "RemoteUnavailable", "SFTP list of 'x' failed ...") == (
        "crm was not restored: the datacenter does not answer.  Check the network (Wi-Fi, "
        "at the right of the bar), then try again")
    assert failure_text("crm", ERR + "Failed", "VM 'crm' may not start: the lease has "
                        "expired: connect to the datacenter to renew it") == (
        "crm was not restored: it may not run on this laptop now: the lease has expired: "
        "connect to the datacenter to renew it")
    assert failure_text("crm", ERR + "RemoteRefused", "SFTP server x refused ...") == \
        "crm was not restored: the datacenter refused this laptop; tell IT"
    assert failure_text("crm", ERR + "VMNotFound", "No such VM in the datacenter ...") == \
        "crm was not restored: the datacenter keeps no copy of it for this laptop; tell IT"
    assert failure_text("crm", ERR + "Failed",
                        "VM 'crm' exists already (its disks in /x); remove it first") == \
        "crm is on this laptop already: it is not replaced"
    assert failure_text("crm", "org.freedesktop.DBus.Error.AccessDenied", "no") == \
        "crm was not restored: you may not restore VMs on this laptop; tell IT"
    assert failure_text("crm", ERR + "InvalidArgs", "vmclient-provd is installing a VM (hr), "
                        "one operation at a time: try again when it is done") == (
        "crm was not restored: vmclient-provd is installing a VM (hr), one operation at a "
        "time: try again when it is done")
    assert list_failure_text(ERR + "RemoteUnavailable", "...") == (
        "The VMs to restore are not known: the datacenter does not answer.  Check the "
        "network (Wi-Fi, at the right of the bar), then try again")
    for text in (failure_text("crm", ERR + "Failed", "internal error: boom"),):
        assert "Traceback" not in text


def test_the_progress_follows_each_restored_vms_fill_until_all_of_it_is_here():
    fills = percents({"crm": (3 << 20, 8 << 20), "other": (1, 2)})
    assert fills == {"crm": 37, "other": 50}
    assert fill_text(["crm"], [], {}) == "crm runs; its disk streams in from the datacenter"
    assert fill_text(["crm"], ["crm"], fills) == \
        "crm runs; 37% of its disk is here (it needs the network until all of it is)"
    assert fill_text(["crm", "hr"], ["crm"], {}) == (
        "crm runs; all of its disk is here: it no longer needs the network\n"
        "hr runs; its disk streams in from the datacenter")


def test_fills_not_of_their_type_are_none():
    assert percents(None) == {} and percents({"crm": "x"}) == {} and percents([1]) == {}
    assert percents({"crm": (5, 0)}) == {"crm": 0}
