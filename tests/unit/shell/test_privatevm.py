"""The install page's recipe: what a person filled in becomes a recipe provd takes, or
words saying what to change (names checked as provd checks them)."""

from __future__ import annotations

import pytest

from vmclient.host.inventory import BadVMName
from vmclient.provision import spec
from vmclient.shell.privatevm import NAME_RULE, NewVM, PageError, recipe_toml


def test_the_pages_values_become_a_private_vm_from_that_iso():
    text = recipe_toml(NewVM("my-fedora", "/home/anna/Fedora-43.iso", memory_gib=8,
                             disk_gib=60, firmware="bios"))
    r = spec.parse(text, "(test)")
    assert (r.name, r.kind, r.zone, r.memory_mib, r.firmware, r.vcpus) == \
        ("my-fedora", "private", "private", 8192, "bios", 2)
    assert r.image.source == "iso" and str(r.image.iso) == "/home/anna/Fedora-43.iso"
    assert [(d.name, d.role, d.size_gib) for d in r.disks] == [("system", "system", 60)]
    assert r.description == "Installed from Fedora-43.iso"
    assert not r.sync.enabled and r.devices.usb == "all" and r.power == "pause"


def test_the_defaults_are_those_of_a_modern_desktop_installer():
    r = spec.parse(recipe_toml(NewVM("home", "/media/usb/installer.iso")), "(test)")
    assert (r.memory_mib, r.system_disk.size_gib, r.firmware) == (4096, 40, "uefi")


@pytest.mark.parametrize("name", ["", "Home", "1home", "home vm", "home_vm", "a" * 32,
                                  "héme", "home\n"])
def test_a_name_provd_refuses_is_refused_on_the_page_in_words(name):
    with pytest.raises(BadVMName):  # provd's own check of a VM's name refuses it too
        spec.vm_name(name)
    with pytest.raises(PageError) as e:
        recipe_toml(NewVM(name, "/home/anna/x.iso"))
    assert NAME_RULE in str(e.value)


@pytest.mark.parametrize("name", ["h", "home", "my-fedora-43", "a" * 31])
def test_a_name_provd_takes_is_taken(name):
    assert spec.vm_name(name) == name
    assert spec.parse(recipe_toml(NewVM(name, "/x.iso")), "(test)").name == name


def test_a_name_in_use_no_installer_or_sizes_out_of_range_say_what_to_do():
    cases = [(NewVM("home", "/x.iso"), ["work", "home"],
              "There is a VM named home already: choose another name"),
             (NewVM("home", ""), [], "Choose the installer (an ISO file) from your files"),
             (NewVM("home", "/x.iso", memory_gib=0), [], "Memory of 0 GiB: choose 1 to 64 GiB"),
             (NewVM("home", "/x.iso", disk_gib=20000), [],
              "Disk of 20000 GiB: choose 1 to 16384 GiB"),
             (NewVM("home", "/x.iso", firmware="coreboot"), [],
              "Firmware 'coreboot' is not one of uefi, bios")]
    for vm, existing, words in cases:
        with pytest.raises(PageError) as e:
            recipe_toml(vm, existing)
        assert str(e.value) == words


@pytest.mark.parametrize("path", ['/home/anna/"quoted" \\ iso.iso', "/home/anna/tab\tnew\nline.iso",
                                  "/home/anna/d\u00e9j\u00e0 vu.iso"])
def test_any_file_name_is_written_as_toml_and_read_back_as_it_was(path):
    r = spec.parse(recipe_toml(NewVM("home", path)), "(test)")
    assert str(r.image.iso) == path


def test_a_file_name_not_in_utf8_is_labelled_not_refused():
    path = b"/home/anna/caf\xe9.iso".decode("utf-8", "surrogateescape")  # as GLib gives it
    r = spec.parse(recipe_toml(NewVM("home", path)), "(test)")
    assert str(r.image.iso) == "/home/anna/caf\ufffd.iso"


def test_a_relative_path_is_refused_as_provd_refuses_it():
    with pytest.raises(PageError) as e:
        recipe_toml(NewVM("home", "installer.iso"))
    assert "image.iso: must be an absolute path without '..'" in str(e.value)
