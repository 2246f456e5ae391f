"""The services recipe packages what python-services declares."""

from __future__ import annotations

import re
import tomllib

import pytest

from .bbvars import value, words
from .layerutil import LAYER, SERVICES

pytestmark = pytest.mark.layer

RECIPE = LAYER / "recipes-vmclient" / "vmclient-services" / "vmclient-services.bb"

# PyPI distribution name (PEP 503 normalised) -> package name in the image.
# A new runtime dependency in pyproject.toml needs a line here, and the
# package must exist in a pinned layer (or a recipe in meta-vmclient).
PYPI_TO_YOCTO = {
    "dbus-fast": "python3-dbus-fast",  # meta-python
    "libvirt-python": "libvirt-python",  # meta-virtualization, built by the libvirt recipe
    "pyudev": "python3-pyudev",  # meta-python
    "evdev": "python3-evdev",  # meta-python
    "paramiko": "python3-paramiko",  # meta-python
    "cryptography": "python3-cryptography",  # openembedded-core
    "zstandard": "python3-zstandard",  # meta-python
    "rich": "python3-rich",  # meta-python
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, f"cannot read requirement {requirement!r}"
    return _normalise(m.group(1))


def _pyproject() -> dict:
    with (SERVICES / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def test_every_runtime_dependency_is_in_rdepends_under_its_yocto_name():
    deps = [_requirement_name(r) for r in _pyproject()["project"].get("dependencies", [])]
    assert deps, "pyproject.toml declares no runtime dependencies: is this the right file?"
    unmapped = [d for d in deps if d not in PYPI_TO_YOCTO]
    assert not unmapped, (
        f"add the Yocto package name of {unmapped} to PYPI_TO_YOCTO in {__file__}"
    )
    rdepends = set(words(RECIPE, "RDEPENDS:${PN}"))
    absent = {d: PYPI_TO_YOCTO[d] for d in deps if PYPI_TO_YOCTO[d] not in rdepends}
    assert not absent, f"RDEPENDS:${{PN}} of {RECIPE.name} lacks {absent}"


def test_the_image_carries_openssh_s_client_the_sftp_transport_runs():
    assert "openssh-ssh" in words(RECIPE, "RDEPENDS:${PN}")  # vmclient.transport.ssh


def test_recipe_version_matches_pyproject():
    assert value(RECIPE, "PV") == _pyproject()["project"]["version"]


def test_every_systemd_unit_is_listed_in_systemd_service():
    units = sorted(p.name for p in (SERVICES / "data" / "systemd").iterdir() if p.suffix == ".service")
    assert units
    listed = words(RECIPE, "SYSTEMD_SERVICE:${PN}")
    assert sorted(listed) == units


def test_units_use_the_bindir_placeholder_the_recipe_substitutes():
    for unit in (SERVICES / "data" / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                assert line.startswith("ExecStart=@BINDIR@/"), f"{unit.name}: {line}"
    assert "s,@BINDIR@,${bindir},g" in RECIPE.read_text()


def test_every_data_directory_is_installed_by_the_recipe():
    text = RECIPE.read_text()
    data = SERVICES / "data"
    for sub in sorted({p.parent.relative_to(data) for p in data.rglob("*") if p.is_file()}):
        assert f"$data/{sub.as_posix()}" in text, f"data/{sub} is not installed by {RECIPE.name}"


def test_no_hard_coded_systemd_unit_directory():
    for recipe in LAYER.rglob("*.bb*"):
        assert "/usr/lib/systemd/system" not in recipe.read_text(), recipe
