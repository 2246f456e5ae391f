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
    "boto3": "python3-boto3",  # meta-vmclient (with botocore and s3transfer)
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
    units = sorted(p.name for p in (SERVICES / "data" / "systemd").iterdir()
                   if p.suffix in (".service", ".path"))
    assert units
    listed = words(RECIPE, "SYSTEMD_SERVICE:${PN}")
    assert sorted(listed) == units


def test_units_use_the_bindir_placeholder_the_recipe_substitutes():
    """@BINDIR@ is where the services' own commands are (/usr/bin on the image, the venv's
    bin on the test host); systemd's own tools keep their path (/usr/bin on both)."""
    for unit in (SERVICES / "data" / "systemd").glob("*.service"):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                assert line.startswith(("ExecStart=@BINDIR@/", "ExecStart=/usr/bin/busctl ")), \
                    f"{unit.name}: {line}"
    assert "s,@BINDIR@,${bindir},g" in RECIPE.read_text()


def test_man_pages_and_bash_completion_are_installed_and_packaged():
    text = RECIPE.read_text()
    assert "vmclient_install_dir $data/man/man1 ${mandir}/man1 0644" in text
    assert ("vmclient_install_dir $data/bash-completion "
            "${datadir}/bash-completion/completions 0644") in text
    # oe-core's class packages ${datadir}/bash-completion as ${PN}-bash-completion
    assert re.search(r"^inherit\b.*\bbash-completion\b", text, re.M)
    # the hooks run the CLIs under argcomplete (python3-argcomplete, meta-python)
    assert "python3-argcomplete" in words(RECIPE, "RDEPENDS:${PN}-bash-completion")
    pages = sorted(p.name for p in (SERVICES / "data" / "man" / "man1").glob("*.1"))
    hooks = sorted(p.name for p in (SERVICES / "data" / "bash-completion").iterdir())
    assert pages == ["vmclient-admin.1", "vmclientctl.1"] and hooks == ["vmclient-admin",
                                                                        "vmclientctl"]


def test_every_data_directory_is_installed_by_the_recipe():
    text = RECIPE.read_text()
    data = SERVICES / "data"
    for sub in sorted({p.parent.relative_to(data) for p in data.rglob("*") if p.is_file()}):
        assert f"$data/{sub.as_posix()}" in text, f"data/{sub} is not installed by {RECIPE.name}"
    # the interfaces' introspection XML lives in the package (the daemons read it)
    assert list((SERVICES / "src/vmclient/dbus/xml").glob("org.vmclient.VMClient1.*.xml"))
    assert ("${S}/src/vmclient/dbus/xml/org.vmclient.VMClient1.*.xml \\\n"
            "        ${D}${datadir}/dbus-1/interfaces/") in text


def test_no_hard_coded_systemd_unit_directory():
    for recipe in LAYER.rglob("*.bb*"):
        assert "/usr/lib/systemd/system" not in recipe.read_text(), recipe


# --- issue 16 §1.10: only what the repository tracks ---------------------------

def _only_tracked():
    """The recipe's do_unpack postfunc, as a Python function of ``d``."""
    text = RECIPE.read_text()
    m = re.search(r"^python vmclient_only_tracked\(\) \{\n(.*?)^\}", text, re.M | re.S)
    assert m, "the recipe has no vmclient_only_tracked"
    assert re.search(r'^do_unpack\[postfuncs\] \+= "vmclient_only_tracked"$', text, re.M)
    namespace: dict = {}
    exec("import os\ndef run(d, bb):\n" + m.group(1), namespace)  # our own recipe's function
    return namespace["run"]


class _BB:
    notes: list[str]

    def __init__(self) -> None:
        self.notes = []

    def note(self, msg: str) -> None:
        self.notes.append(msg)

    def fatal(self, msg: str) -> None:
        raise AssertionError(f"bb.fatal: {msg}")


class _D:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def getVar(self, name: str) -> str:  # bitbake's datastore API
        return self.values[name]


def _checkout(top, files: dict[str, str]) -> None:
    import subprocess

    for rel, text in files.items():
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text(text)
    subprocess.run(["git", "init", "-q", str(top)], check=True)
    subprocess.run(["git", "-C", str(top), "add", "--", *files], check=True)


def _unpack(top, unpackdir) -> None:
    """What file://python-services, file://tests/unit, ... leave in UNPACKDIR."""
    import shutil

    for root in value(RECIPE, "VMCLIENT_REPO_DIRS").split():
        if (top / root).is_dir():
            shutil.copytree(top / root, unpackdir / root)
        elif (top / root).exists():
            shutil.copy2(top / root, unpackdir / root)


TRACKED = {
    "python-services/pyproject.toml": "[project]\n",
    "python-services/src/vmclient/__init__.py": "",
    "tests/unit/test_a.py": "def test(): pass\n",
    "tests/conftest.py": "",
    "recipes/office.toml": "",
    "pytest.ini": "[pytest]\n",
}
UNTRACKED = [
    "python-services/src/vmclient.egg-info/PKG-INFO",
    "python-services/.mypy_cache/3.11/cache.db",
    "tests/unit/__pycache__/test_a.cpython-311.pyc",
    "tests/unit/scratch_notes.txt",
    "recipes/my-private.toml",
]


def test_the_services_recipe_takes_only_files_the_repository_tracks(tmp_path):
    top, unpackdir = tmp_path / "repo", tmp_path / "unpack"
    _checkout(top, TRACKED)
    for rel in UNTRACKED:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("not tracked")
    unpackdir.mkdir()
    _unpack(top, unpackdir)
    d = _D({"FILE_DIRNAME": str(top / "meta-vmclient" / "recipes-vmclient" / "vmclient-services"),
            "UNPACKDIR": str(unpackdir), "VMCLIENT_REPO_DIRS": value(RECIPE, "VMCLIENT_REPO_DIRS")})
    _only_tracked()(d, _BB())
    left = sorted(str(p.relative_to(unpackdir)) for p in unpackdir.rglob("*") if p.is_file())
    assert left == sorted(TRACKED)
    assert not (unpackdir / "python-services" / "src" / "vmclient.egg-info").exists()
    assert not (unpackdir / "tests" / "unit" / "__pycache__").exists()


def test_outside_a_git_checkout_the_recipe_takes_every_file(tmp_path):
    top, unpackdir = tmp_path / "release", tmp_path / "unpack"
    for rel in [*TRACKED, *UNTRACKED]:
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x")
    unpackdir.mkdir()
    _unpack(top, unpackdir)
    bb = _BB()
    d = _D({"FILE_DIRNAME": str(top / "meta-vmclient" / "recipes-vmclient" / "vmclient-services"),
            "UNPACKDIR": str(unpackdir), "VMCLIENT_REPO_DIRS": value(RECIPE, "VMCLIENT_REPO_DIRS")})
    _only_tracked()(d, bb)
    assert len([p for p in unpackdir.rglob("*") if p.is_file()]) == len(TRACKED) + len(UNTRACKED)
    assert bb.notes and "not a git checkout" in bb.notes[0]


# --- issue 15: the shell's own package ------------------------------------------

# GObject introspection namespace -> the package whose typelib it is.
GI_NAMESPACES = {
    "Gtk": "gtk+3",
    "Gdk": "gtk+3",
    "GdkPixbuf": "gdk-pixbuf",
    "Pango": "pango",
    "SpiceClientGLib": "spice-gtk",
    "SpiceClientGtk": "spice-gtk",
    "Gio": "python3-pygobject",  # glib-2.0's typelibs, which PyGObject brings
    "GLib": "python3-pygobject",
    "GObject": "python3-pygobject",
}


def test_the_shell_is_a_package_with_every_typelib_it_loads():
    assert "vmclient-shell" in words(RECIPE, "PACKAGES")
    assert set(words(RECIPE, "FILES:vmclient-shell")) == {
        "${bindir}/vmclient-shell", "${PYTHON_SITEPACKAGES_DIR}/vmclient/shell",
        "${sysconfdir}/pam.d/vmclient-shell"}
    rdepends = set(words(RECIPE, "RDEPENDS:vmclient-shell"))
    assert {"${PN}", "python3-pygobject"} <= rdepends
    used = set()
    for path in (SERVICES / "src" / "vmclient" / "shell").glob("*.py"):
        used |= set(re.findall(r'gi\.require_version\("(\w+)"', path.read_text()))
        used |= {n for line in re.findall(r"from gi\.repository import ([\w, ]+)", path.read_text())
                 for n in re.split(r"[, ]+", line) if n}
    assert used, "the shell loads no GObject namespace: is this the right directory?"
    unmapped = sorted(used - set(GI_NAMESPACES))
    assert not unmapped, f"add the package of {unmapped} to GI_NAMESPACES in {__file__}"
    missing = {ns: GI_NAMESPACES[ns] for ns in used if GI_NAMESPACES[ns] not in rdepends}
    assert not missing, f"RDEPENDS:vmclient-shell lacks {missing}"
    assert "vmclient-shell" in (SERVICES / "pyproject.toml").read_text()


def test_the_lock_screen_has_its_pam_service_binding_and_module():
    """The shell checks the seat user's password with pamela (meta-python's recipe is
    named ``pamela``) against ``/etc/pam.d/vmclient-shell``, which uses pam_unix."""
    service = SERVICES / "data" / "pam.d" / "vmclient-shell"
    assert "common-auth" in service.read_text()
    assert "pamela" in (SERVICES / "src" / "vmclient" / "shell" / "auth.py").read_text()
    rdepends = set(words(RECIPE, "RDEPENDS:vmclient-shell"))
    assert {"pamela", "pam-plugin-unix"} <= rdepends
    assert "vmclient_install_dir $data/pam.d ${sysconfdir}/pam.d 0644" in RECIPE.read_text()


def test_meta_vmclient_python_recipes_carry_the_versions_the_constraints_pin():
    """The S3 client stack meta-vmclient adds (boto3, botocore, s3transfer) is what CI
    tests: each recipe's version is the one constraints-wrynose.txt pins."""
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (
        SERVICES / "constraints-wrynose.txt").read_text(), flags=re.M))
    recipes = sorted((LAYER / "recipes-devtools" / "python").glob("python3-*_*.bb"))
    assert {r.name.split("_")[0] for r in recipes} >= {
        "python3-boto3", "python3-botocore", "python3-s3transfer"}
    for recipe in recipes:
        name, version = recipe.stem.split("_", 1)
        pypi = name.removeprefix("python3-")
        assert pins.get(pypi) == version, f"{recipe.name}: constraints pin {pypi}=={pins.get(pypi)}"
