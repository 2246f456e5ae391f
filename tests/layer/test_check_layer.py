"""scripts/check-layer: `bitbake -p` and yocto-check-layer against checkouts
of the pinned layers.  Runs when VMCLIENT_LAYERS_DIR points at such a
directory (what `kas checkout kas.yml` produces); skips otherwise."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .layerutil import REPO

pytestmark = pytest.mark.layer

SCRIPT = REPO / "scripts" / "check-layer"
LAYERS_DIR = os.environ.get("VMCLIENT_LAYERS_DIR", "")


def test_check_layer_refuses_a_directory_without_the_pinned_layers(tmp_path):
    proc = subprocess.run([str(SCRIPT), "--parse-only", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "bitbake is missing" in proc.stderr


@pytest.mark.timeout(3 * 3600)
@pytest.mark.skipif(not LAYERS_DIR, reason="VMCLIENT_LAYERS_DIR is not set: bitbake -p and "
                    "yocto-check-layer were NOT run (point it at a `kas checkout kas.yml` directory)")
def test_layer_parses_and_passes_yocto_check_layer():
    layers = Path(LAYERS_DIR)
    assert (layers / "openembedded-core").is_dir(), f"VMCLIENT_LAYERS_DIR={layers} holds no openembedded-core"
    # The script picks its own build directory: when run as root it hands
    # over to an unprivileged user, who cannot enter pytest's tmp_path.
    proc = subprocess.run([str(SCRIPT), str(layers)],
                          capture_output=True, text=True, timeout=3 * 3600, check=False)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
    assert proc.returncode == 0, f"scripts/check-layer failed (exit {proc.returncode}):\n{tail}"


# --- check-layer-resolve's "packagegroup entries are filled" rule ----------

def _resolve_module():
    import importlib.machinery
    import importlib.util

    path = REPO / "scripts" / "check-layer-resolve"
    loader = importlib.machinery.SourceFileLoader("check_layer_resolve", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


class _Data:
    """The few datastore calls the rule makes, over expanded values."""

    def __init__(self, values):
        self.values = values

    def getVar(self, name):  # bitbake's datastore API
        return self.values.get(name)


D = "/build/tmp/work/ovmf/image"

# The pinned openembedded-core ovmf recipe's do_install:class-target, as
# bitbake expands it (secureboot off), and its packaging.
OVMF = {
    "D": D,
    "PN": "ovmf",
    "do_install": f"""
    install -d {D}/efi/boot
    install /build/tmp/work/ovmf/ovmf/Shell.efi {D}/efi/boot/bootx64.efi
    if false; then
        install /build/tmp/work/ovmf/ovmf/EnrollDefaultKeys.efi {D}
    fi
""",
    "PACKAGES": "ovmf-shell-efi ovmf-src ovmf-dbg ovmf-staticdev ovmf-dev ovmf-doc ovmf-locale ovmf",
    "FILES:ovmf-shell-efi": " EnrollDefaultKeys.efi efi/ ",
    "FILES:ovmf-dev": "/usr/include /usr/lib/*.so",
    "FILES:ovmf": "/usr/bin/* /usr/sbin/* /usr/libexec/* /usr/lib/lib*.so.* /etc /usr/share/ovmf /usr/lib/ovmf",
}


def test_resolve_rule_finds_that_the_ovmf_recipe_fills_only_ovmf_shell_efi():
    m = _resolve_module()
    d = _Data(OVMF)
    paths = m.installed_paths(d)
    assert sorted(paths) == ["/EnrollDefaultKeys.efi", "/efi/boot/bootx64.efi"]
    taken = {}
    for pkg in OVMF["PACKAGES"].split():
        for pattern in OVMF.get(f"FILES:{pkg}", "").split():
            for path in paths:
                if path not in taken and m.claims(pattern, path):
                    taken[path] = pkg
    assert set(taken.values()) == {"ovmf-shell-efi"}


def test_resolve_rule_leaves_build_system_installs_undecided():
    m = _resolve_module()
    d = _Data({**OVMF, "do_install": f"    oe_runmake DESTDIR={D} install\n"})
    assert m.installed_paths(d) is None


# --- check-layer-resolve's firmware and package-owner rules -----------------------

class _Tinfoil:
    """get_runtime_providers and parse_recipe_file over one recipe's data."""

    def __init__(self, fn, data):
        self.fn, self.data = fn, data

    def get_runtime_providers(self, name):
        return ([self.fn], self.fn) if name in self.data.values["PACKAGES"].split() else ([], None)

    def parse_recipe_file(self, fn):
        assert fn == self.fn
        return self.data


# The pinned linux-firmware recipe, as it resolves: -iwlwifi and -ibt are
# empty meta packages; its populate_packages:prepend makes each recommend
# the packages named after it, at packaging time.
FIRMWARE = {
    "populate_packages": """
    iwlwifi_pkgs = filter(lambda x: x.find('-iwlwifi-') != -1, firmware_pkgs)
    d.appendVar('RRECOMMENDS:linux-firmware-iwlwifi', ' ' + ' '.join(iwlwifi_pkgs))
    ibt_pkgs = filter(lambda x: x.find('-ibt-') != -1, firmware_pkgs)
    d.appendVar('RRECOMMENDS:linux-firmware-ibt', ' ' + ' '.join(ibt_pkgs))
""",
    "PACKAGES": ("linux-firmware-iwlwifi-license linux-firmware-iwlwifi linux-firmware-iwlwifi-misc "
                 "linux-firmware-ibt linux-firmware-ibt-license linux-firmware-sof-empty "
                 "linux-firmware-i915 linux-firmware"),
    "FILES:linux-firmware-iwlwifi-license": "/usr/lib/firmware/LICENCE.iwlwifi_firmware",
    "FILES:linux-firmware-iwlwifi-misc": "/usr/lib/firmware/iwlwifi-*.ucode*",
    "FILES:linux-firmware-ibt-license": "/usr/lib/firmware/LICENCE.ibt_firmware",
    "FILES:linux-firmware-i915": "/usr/lib/firmware/i915",
    "FILES:linux-firmware": "",
    "RRECOMMENDS:linux-firmware-i915": "linux-firmware-i915-license",
}


def _firmware_check(m, wanted):
    m.failures.clear()
    pg = _Data({"PACKAGES": "packagegroup-vmclient-drivers",
                "RRECOMMENDS:packagegroup-vmclient-drivers": " ".join(wanted)})
    m.check_firmware(_Tinfoil("linux-firmware.bb", _Data(FIRMWARE)), pg, {})
    return list(m.failures)


def test_resolve_firmware_rule_accepts_files_and_meta_packages_that_recommend_files():
    m = _resolve_module()
    assert _firmware_check(m, ["linux-firmware-i915", "linux-firmware-iwlwifi"]) == []


def test_resolve_firmware_rule_refuses_empty_and_license_only_packages():
    m = _resolve_module()
    failed = _firmware_check(m, ["linux-firmware-ibt", "linux-firmware-sof-empty", "linux-firmware-sof"])
    assert len(failed) == 3, failed
    assert any("linux-firmware-ibt" in f for f in failed)  # recommends only its licence
    # linux-firmware-sof-empty: no files, and no packaging-time rule names it.
    assert any("linux-firmware-sof has a provider" in f for f in failed)


def test_resolve_package_of_follows_the_order_of_packages():
    m = _resolve_module()
    d = _Data({"PACKAGES": "vmclient-shell vmclient-services",
               "FILES:vmclient-shell": "/usr/bin/vmclient-shell /usr/lib/python3.14/site-packages/vmclient/shell",
               "FILES:vmclient-services": "/usr/bin/* /usr/lib/python3.14/site-packages"})
    assert m.package_of(d, "/usr/lib/python3.14/site-packages/vmclient/shell/window.py") == "vmclient-shell"
    assert m.package_of(d, "/usr/lib/python3.14/site-packages/vmclient/daemon.py") == "vmclient-services"
    assert m.package_of(d, "/etc/vmclient/power.toml") is None


# --- check-layer-resolve's Secure Boot signing rule --------------------------------

class _Recipes:
    """parse_recipe over a few recipes' values; an unknown name has no provider,
    as bitbake's tinfoil raises for it."""

    def __init__(self, recipes):
        self.recipes = recipes

    def parse_recipe(self, pn):
        if pn not in self.recipes:
            raise RuntimeError(f"Nothing PROVIDES '{pn}'")
        return _Data(self.recipes[pn])


SB = {"VMCLIENT_SB_KEY": "/keys/db.key", "VMCLIENT_SB_CERT": "/keys/db.crt"}
EFI = "/build/tmp/work/systemd-boot/build/src/boot"

# systemd-boot as the pinned openembedded-core recipe resolves (no bbappend).
BOOT_PINNED = {**SB, "DEPENDS": "libcap util-linux gperf-native python3-jinja2-native",
               "do_install": f"    install -d /image/boot/EFI/BOOT\n"
                             f"    install {EFI}/systemd-boot*.efi /image/boot/EFI/BOOT/bootx64.efi\n",
               "do_deploy": f"    install {EFI}/systemd-boot*.efi /deploy\n"}


def _signing_check(m, image, recipes):
    m.failures.clear()
    m.check_boot_signing(_Recipes(recipes), _Data(image))
    return list(m.failures)


def test_resolve_signing_rule_fails_with_the_pinned_layers_alone():
    m = _resolve_module()
    failed = _signing_check(m, {**SB, "DEPENDS": "systemd-boot systemd-boot-native"},
                            {"systemd-boot": BOOT_PINNED})
    assert any("DEPENDS has sbsigntool-native (ukify" in f for f in failed), failed
    assert any("sbsigntool-native: a recipe provides it" in f for f in failed), failed
    assert any("systemd-boot: do_install signs" in f for f in failed), failed
    assert any("systemd-boot: do_deploy signs" in f for f in failed), failed


def test_resolve_signing_rule_accepts_the_signing_tool_and_a_signed_boot_loader():
    m = _resolve_module()
    sign = '    sbsign --key "/keys/db.key" --cert "/keys/db.crt" \\\n        --output {} "$efi"\n'
    boot = {**BOOT_PINNED, "DEPENDS": BOOT_PINNED["DEPENDS"] + " sbsigntool-native",
            "do_install": BOOT_PINNED["do_install"] + sign.format("/image/boot/EFI/BOOT/bootx64.efi"),
            "do_deploy": BOOT_PINNED["do_deploy"] + sign.format('"/deploy/$(basename "$efi")"')}
    tool = {"SRCREV_sbsigntools": "9cfca9fe7aa7a8e29b92fe33ce8433e212c9a8ba",
            "SRCREV_ccan": "b1f28e17227f2320d07fe052a8a48942fe17caa5",
            "LIC_FILES_CHKSUM": "file://COPYING;md5=a7710ac18adec371b84a9594ed04fd20"}
    image = {**SB, "DEPENDS": "systemd-boot systemd-boot-native sbsigntool-native"}
    assert _signing_check(m, image, {"systemd-boot": boot, "sbsigntool-native": tool}) == []
    # a moving SRCREV is not a pinned source
    assert _signing_check(m, image, {"systemd-boot": boot,
                                     "sbsigntool-native": {**tool, "SRCREV_ccan": "AUTOINC"}})


def test_resolve_signing_rule_checks_nothing_without_a_key():
    m = _resolve_module()
    assert _signing_check(m, {"VMCLIENT_SB_KEY": "", "DEPENDS": ""}, {}) == []
