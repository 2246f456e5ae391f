"""The Debian test host's storage is the image's (tests/system/image/layout.py): the
units it installs are generated from this layer's templates and distro conf, every
placeholder filled, one bind per VMCLIENT_PERSISTENT_BINDS line, and the copies of
openembedded-core's files are the pinned ones where a checkout is at hand."""

from __future__ import annotations

import configparser
import importlib.util
import os
from pathlib import Path

import pytest

from . import bbvars
from .layerutil import LAYER, REPO

pytestmark = pytest.mark.layer

LAYOUT_PY = REPO / "tests" / "system" / "image" / "layout.py"


def _layout():
    spec = importlib.util.spec_from_file_location("vmclient_test_host_layout", LAYOUT_PY)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ini(text: str) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(text)
    return cp


def test_test_host_binds_what_the_distro_binds_with_the_recipes_units(tmp_path: Path) -> None:
    layout = _layout()
    units = layout.units()
    data_dir, binds = layout.persistent_binds((LAYER / "conf/distro/vmclient.conf").read_text())
    assert data_dir == "/var/lib/vmclient"
    value = bbvars.value(LAYER / "conf/distro/vmclient.conf", "VMCLIENT_PERSISTENT_BINDS")
    assert len(binds) == value.count("${VMCLIENT_DATA_DIR}/") >= 3
    assert {"/etc/libvirt", "/var/lib/libvirt"} <= {where for _, where in binds}
    for what, where in binds:
        unit = _ini(units[f"vmclient-persist-{layout.unit_name(where)}.service"])
        assert unit["Service"]["ExecStart"] == f"/sbin/mount-copybind {what} {where}"
        assert unit["Unit"]["RequiresMountsFor"] == data_dir
    mount = _ini(units["var-lib-vmclient.mount"])
    assert mount["Mount"]["What"] == "/dev/mapper/vmdata" and mount["Mount"]["Where"] == data_dir
    lib = _ini(units["var-volatile-lib.service"])
    assert lib["Service"]["ExecStart"] == "/sbin/mount-copybind /var/volatile/lib /var/lib"
    assert "systemd-random-seed.service" in lib["Unit"]["Before"].split()
    assert not any("@" in text.replace("systemd-cryptsetup@", "") for text in units.values())

    root = tmp_path / "root"
    (root / "var/log").mkdir(parents=True)
    enabled = layout.install(root)
    assert (root / "var/log").readlink() == Path("volatile/log")
    assert (root / "etc/crypttab").read_text() == (
        LAYER / "recipes-core/vmclient-persist/files/crypttab").read_text()
    assert (root / "usr/lib/repart.d/50-vmdata.conf").exists()
    assert set(enabled) == set(units) - set(layout.STATIC)
    assert "vmclient-machine-id.service" in enabled
    target = _ini(units["vmclient-data.target"])
    assert set(target["Unit"]["Requires"].split()) == {
        "var-lib-vmclient.mount", "vmclient-machine-id.service",
        *(f"vmclient-persist-{layout.unit_name(where)}.service" for _, where in binds)}
    recovery = _ini((root / layout.RECOVERY_DROPIN).read_text())
    assert recovery["Service"]["ExecStart"] == "/usr/libexec/vmclient-data-recovery"
    assert os.access(root / "usr/libexec/vmclient-data-recovery", os.X_OK)
    # every unit that needs the partition requires it; the test host's desktop is
    # vmclient-desktop.service (the image's weston.service)
    users = layout.data_users((LAYER / "conf/distro/vmclient.conf").read_text())
    assert "weston.service" in users and "libvirtd.service" in users
    for user in users:
        dropin = root / layout.UNIT_DIR / f"{layout.DESKTOP_UNIT.get(user, user)}.d/50-vmclient-data.conf"
        assert _ini(dropin.read_text())["Unit"]["Requires"] == "vmclient-data.target", user
    assert (root / "usr/lib/tmpfiles.d/vmclient-weston-home.conf").read_text().splitlines()[-1] == (
        "d /home/weston 0700 weston weston -")
    keyboard = _ini((root / layout.UNIT_DIR / "vmclient-desktop.service.d/50-vmclient.conf"
                     ).read_text())["Service"]
    assert "f=/home/weston/.local/state/vmclient-shell/keyboard.env;" in keyboard["ExecStartPre"]
    assert keyboard["EnvironmentFile"] == "-/run/vmclient/weston-keyboard.env"


LAYERS_DIR = os.environ.get("VMCLIENT_LAYERS_DIR", "")  # as test_check_layer.py


@pytest.mark.skipif(not LAYERS_DIR, reason="VMCLIENT_LAYERS_DIR is not set (the pinned "
                    "layers' checkouts, scripts/check-layer)")
def test_copied_files_are_the_pinned_openembedded_cores() -> None:
    oe = Path(LAYERS_DIR) / "openembedded-core"
    copies = {
        "mount-copybind": "meta/recipes-core/volatile-binds/files/mount-copybind",
        "volatile-binds.service.in": "meta/recipes-core/volatile-binds/files/volatile-binds.service.in",
        "00-create-volatile.conf": "meta/recipes-core/systemd/systemd/00-create-volatile.conf",
    }
    here = REPO / "tests" / "system" / "image" / "oe-core"
    for name, upstream in copies.items():
        assert (here / name).read_bytes() == (oe / upstream).read_bytes(), name
