"""VM recipe parsing and validation: every error names file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from vmclient.provision import spec
from vmclient.provision.spec import RecipeError

RECIPES = Path(__file__).resolve().parents[3] / "recipes"

BUSINESS = """
format = 1
name = "office"
kind = "business"
vcpus = 2
memory_mib = 4096
[image]
catalog = "win11-office"
[[disks]]
name = "system"
role = "system"
[[disks]]
name = "data"
role = "user"
size_gib = 10
[network]
zone = "business"
[power]
policy = "pause"
[sync]
enabled = true
"""

PRIVATE = """
format = 1
name = "mine"
kind = "private"
vcpus = 1
memory_mib = 1024
[image]
iso = "/media/x.iso"
[[disks]]
name = "system"
role = "system"
size_gib = 20
[network]
zone = "private"
[power]
policy = "save"
"""


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*/recipe.toml")), ids=lambda p: p.parent.name)
def test_shipped_recipes_are_valid_and_named_after_their_directory(path: Path) -> None:
    recipe = spec.load(path)
    assert recipe.name == path.parent.name
    assert (path.parent / "README.md").is_file()


def test_shipped_recipes_cover_every_image_source() -> None:
    sources = {spec.load(p).image.source for p in RECIPES.glob("*/recipe.toml")}
    assert sources == {"catalog", "iso", "qcow2"}


def test_business_recipe_parses_with_defaults() -> None:
    r = spec.parse(BUSINESS, "office.toml")
    assert (r.kind, r.image.catalog, r.image.version, r.firmware) == \
        ("business", "win11-office", 0, "uefi")
    assert r.system_disk.name == "system" and r.disks[1].size_gib == 10
    assert r.sync.enabled and not r.sync.memory and r.sync.keep_last == 3
    assert r.devices.usb == "none" and r.power == "pause"


def test_private_recipe_parses() -> None:
    r = spec.parse(PRIVATE, "mine.toml")
    assert r.image.source == "iso" and r.image.iso == PurePosixPath("/media/x.iso")
    assert not r.sync.enabled


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('kind = "business"', 'kind = "work"', "kind", "'work' is not one of 'business', 'private'"),
    ("vcpus = 2", "vcpus = 0", "vcpus", "0 is outside 1..64"),
    ("vcpus = 2", 'vcpus = "2"', "vcpus", "must be a whole number"),
    ("memory_mib = 4096\n", "", "memory_mib", "missing (required)"),
    ('name = "office"', 'name = "Office VM"', "name", "does not match"),
    ('policy = "pause"', 'policy = "hibernate"', "power.policy",
     "'hibernate' is not one of 'pause', 's3', 'save', 'ignore'"),
    ('zone = "business"', 'zone = "dmz"', "network.zone", "is not one of"),
    ('zone = "business"', 'zone = "private"', "network.zone", "cannot join the private"),
    ("format = 1", "format = 2", "format", "recipe format 2 is not supported"),
    ("vcpus = 2", "vcpus = 2\ncpus = 2", "cpus", "unknown key"),
    ("[sync]\nenabled = true", "[sync]\nenabled = true\nmemroy = true", "sync.memroy",
     "unknown key"),
    ('role = "user"', 'role = "system"', "disks", "exactly one disk with role 'system'"),
    ('name = "data"', 'name = "system"', "disks[1].name", "duplicate disk name"),
    ("size_gib = 10", "size_gib = 0", "disks[1].size_gib", "a user disk needs a size"),
    ('catalog = "win11-office"', 'qcow2 = "/x.qcow2"', "image", "comes from the datacenter"),
    ('catalog = "win11-office"', 'catalog = "w"\niso = "/x.iso"', "image",
     "exactly one of catalog, iso, qcow2"),
    ("[sync]\nenabled = true", "[sync]\nenabled = false\nmemory = true", "sync.memory",
     "only meaningful"),
    ("[sync]", '[devices]\nusb = "listed"\n[sync]', "devices.usb_allow", "is required"),
    ("[sync]", '[devices]\nusb = "all"\nusb_allow = ["1050:0407"]\n[sync]',
     "devices.usb_allow", "allowed only with it"),
    ("[sync]", '[devices]\nusb = "listed"\nusb_allow = ["YubiKey"]\n[sync]',
     "devices.usb_allow[0]", "is not a USB id"),
    ("[network]", '[network]\nmac = "00:11:22:33:44:55"', "network.mac", "does not match"),
])
def test_business_recipe_errors_name_file_and_key(old: str, new: str, key: str,
                                                  problem: str) -> None:
    with pytest.raises(RecipeError) as err:
        spec.parse(edit(BUSINESS, old, new), "/etc/vmclient/recipes/office.toml")
    assert err.value.path == "/etc/vmclient/recipes/office.toml"
    assert err.value.key == key
    assert problem in err.value.problem
    assert str(err.value).startswith(f"/etc/vmclient/recipes/office.toml: {key}: ")


@pytest.mark.parametrize(("old", "new", "key", "problem"), [
    ('iso = "/media/x.iso"', 'catalog = "win11-office"', "image.catalog", "never from the"),
    ('policy = "save"', 'policy = "save"\n[sync]\nenabled = true', "sync.enabled",
     "never uploaded"),
    ('zone = "private"', 'zone = "business"', "network.zone", "cannot join the business"),
    ('iso = "/media/x.iso"', 'iso = "media/x.iso"', "image.iso", "absolute path"),
    ('iso = "/media/x.iso"', 'iso = "/media/../etc/shadow"', "image.iso", "without '..'"),
    ('iso = "/media/x.iso"', 'iso = "/media/x.iso"\nversion = 3', "image.version",
     "only a catalog image has a version"),
    ("size_gib = 20", "size_gib = 0", "disks", "needs a size_gib for the blank system disk"),
])
def test_private_recipe_errors(old: str, new: str, key: str, problem: str) -> None:
    with pytest.raises(RecipeError) as err:
        spec.parse(edit(PRIVATE, old, new), "mine.toml")
    assert (err.value.key, problem in err.value.problem) == (key, True), str(err.value)


def test_invalid_toml_and_unreadable_file_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"^bad.toml: \(file\): not valid TOML"):
        spec.parse("name = ", "bad.toml")
    with pytest.raises(RecipeError, match="cannot read"):
        spec.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("untrusted", ["../x", "a/b", "..", ".", "", "Office", "x" * 32,
                                       "a\n", "-a", "/etc"])
def test_a_vm_name_from_a_caller_is_a_recipe_name_or_refused(untrusted: str) -> None:
    with pytest.raises(spec.BadVMName, match="Not a VM name"):
        spec.vm_name(untrusted)
    assert spec.vm_name("office-2") == "office-2"


def test_a_raw_disk_image_is_its_own_source_never_probed() -> None:
    r = spec.parse(PRIVATE.replace('iso = "/media/x.iso"', 'raw = "/media/x.img"'), "p.toml")
    assert (r.image.source, r.image.media) == ("raw", PurePosixPath("/media/x.img"))
    with pytest.raises(RecipeError, match="exactly one of catalog, iso, qcow2, raw"):
        spec.parse(PRIVATE.replace('iso = "/media/x.iso"', 'iso = "/a"\nraw = "/b"'), "p")
