"""What the layer's own files say, checked offline (CI has no layer
checkouts): the image's disk layout, the persistent state under a read-only
root, the QEMU/libvirt configuration provd needs, the kernel feature, the
laptop packages.  scripts/check-layer-resolve asserts the same against what
the pinned layers resolve them to; these catch a regression without them."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from . import bbvars
from .layerutil import LAYER, REPO

pytestmark = pytest.mark.layer

DISTRO = LAYER / "conf" / "distro" / "vmclient.conf"
IMAGE = LAYER / "recipes-core" / "images" / "vmclient-image.bb"
PACKAGEGROUP = LAYER / "recipes-core" / "packagegroups" / "packagegroup-vmclient.bb"
PERSIST = LAYER / "recipes-core" / "vmclient-persist"
KERNEL = LAYER / "recipes-kernel" / "linux"
OEQA = LAYER / "lib" / "oeqa" / "runtime" / "cases" / "vmclient.py"

# bitbake.conf's paths, for expanding our values here.
PATHS = {"localstatedir": "/var", "sysconfdir": "/etc", "base_prefix": ""}

ROOT_X86_64 = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"
LINUX_GENERIC = "0fc63daf-8483-4772-8e79-3d69d8477de4"


def expand(text: str, extra: dict[str, str] | None = None) -> str:
    values = {**PATHS, **(extra or {})}
    for _ in range(5):
        text = re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
    return text


def distro_value(name: str) -> str:
    return expand(bbvars.value(DISTRO, name))


def wks() -> tuple[dict[str, list[str]], list[str]]:
    """The wks's partitions (mount point -> words) in order, and its
    bootloader line's words, expanded with the distro's values."""
    wks_file = bbvars.value(IMAGE, "WKS_FILE")
    text = (LAYER / "files" / "wic" / wks_file).read_text()
    extra = {"VMCLIENT_DATA_DIR": distro_value("VMCLIENT_DATA_DIR"),
             "VMCLIENT_KERNEL_CONSOLE": distro_value("VMCLIENT_KERNEL_CONSOLE"),
             "EFI_PROVIDER": bbvars.value(DISTRO, "EFI_PROVIDER")}
    parts: dict[str, list[str]] = {}
    boot: list[str] = []
    for line in expand(text, extra).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = shlex.split(line)
        if args[0] == "part":
            parts[args[1]] = args
        elif args[0] == "bootloader":
            boot = args
    return parts, boot


def option(args: list[str], name: str) -> str | None:
    """``--name value`` or ``--name=value``."""
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


# --- defect 2: the image's own disk layout is the one used ------------------

def test_image_sets_wks_file_so_that_the_machines_default_does_not_win():
    # Both machines set WKS_FILE with "?=" in their configuration, parsed
    # before the recipe: a "?=" in the recipe never takes effect.
    ops = [op for name, op, _v in bbvars.assignments(IMAGE) if name == "WKS_FILE"]
    assert ops == ["="], f"WKS_FILE assignments in {IMAGE.name}: {ops}"
    assert (LAYER / "files" / "wic" / bbvars.value(IMAGE, "WKS_FILE")).is_file()


def test_wks_has_esp_root_and_a_last_data_partition_found_by_partuuid():
    parts, boot = wks()
    data_dir = distro_value("VMCLIENT_DATA_DIR")
    assert list(parts) == ["/boot", "/", data_dir]
    assert all("--use-uuid" in p and "--ondisk" not in p for p in parts.values()), parts
    assert option(boot, "--ptable") == "gpt"
    assert option(parts["/boot"], "--source") == "bootimg_efi"


# --- defect 4: the data partition grows to the disk --------------------------

def test_data_partition_grows_on_first_boot_and_root_is_never_taken_for_it():
    parts, _boot = wks()
    data = parts[distro_value("VMCLIENT_DATA_DIR")]
    root = parts["/"]
    assert option(root, "--part-type") == ROOT_X86_64
    assert option(data, "--part-type") == LINUX_GENERIC
    fsoptions = option(data, "--fsoptions").split(",")
    assert "x-systemd.growfs" in fsoptions
    assert "x-systemd.after=systemd-repart.service" in fsoptions
    repart = (PERSIST / "files" / "50-vmdata.conf").read_text()
    assert re.search(r"^Type=linux-generic$", repart, re.M)
    assert re.search(rf"^Label={option(data, '--label')}$", repart, re.M)
    assert not re.search(r"^SizeMaxBytes=", repart, re.M), "the data partition must take the whole disk"
    assert "repart" in bbvars.words(DISTRO, "PACKAGECONFIG:append:pn-systemd")


# --- defect 8: no serial console first on a laptop ---------------------------

def test_laptop_kernel_command_line_has_no_serial_console_and_qemu_has_one():
    _parts, boot = wks()
    consoles = re.findall(r"console=(\S+)", option(boot, "--append"))
    assert consoles and not [c for c in consoles if c.startswith("ttyS")], consoles
    qemu = (REPO / "conf" / "kas" / "qemu.yml").read_text()
    assert re.search(r'VMCLIENT_KERNEL_CONSOLE = ".*console=ttyS0', qemu)


# --- defects 3 and 4: state that must survive a reboot -----------------------

def test_volatile_binds_hold_nothing_persistent():
    # volatile-binds' units skip themselves when the mount point is already
    # writable (ConditionPathIsReadWrite=!<where>): a bind under the
    # volatile /var/lib never happens, and the data lands in tmpfs.
    try:
        binds = bbvars.lines(DISTRO, "VOLATILE_BINDS")
    except ValueError:
        return  # poky's default: volatile only
    persistent = [b for b in binds if not expand(b[0]).startswith("/var/volatile/")]
    assert not persistent, f"VOLATILE_BINDS binds persistent directories: {persistent}"


def test_libvirt_definitions_state_and_journal_are_bound_from_the_data_partition():
    data_dir = distro_value("VMCLIENT_DATA_DIR")
    extra = {"VMCLIENT_DATA_DIR": data_dir}
    binds = {expand(where, extra): expand(what, extra)
             for what, where in bbvars.lines(DISTRO, "VMCLIENT_PERSISTENT_BINDS")}
    for where in ("/etc/libvirt", "/var/lib/libvirt"):
        assert binds.get(where, "").startswith(data_dir + "/"), (where, binds)
    journal = [w for w in binds if w.endswith("/log/journal")]
    assert journal and binds[journal[0]].startswith(data_dir + "/"), binds


def test_persistent_bind_units_fail_rather_than_skip():
    unit = (PERSIST / "files" / "vmclient-persist.service.in").read_text()
    directives = [ln.split("=", 1)[0] for ln in unit.splitlines() if ln and not ln.startswith("#")]
    assert "ConditionPathIsReadWrite" not in directives
    assert re.search(r"^RequiresMountsFor=@datadir@$", unit, re.M)
    for before in ("local-fs.target", "systemd-journal-flush.service"):
        assert re.search(rf"^Before=.*\b{re.escape(before)}\b", unit, re.M), before
    assert re.search(r"^After=.*\bvar-volatile-lib\.service\b", unit, re.M)


def test_journal_persists_with_a_size_cap():
    conf = (PERSIST / "files" / "50-vmclient-journal.conf").read_text()
    assert re.search(r"^Storage=persistent$", conf, re.M)
    assert re.search(r"^SystemMaxUse=\d+[MG]$", conf, re.M)


# --- defect 5 and 10: QEMU, libvirt, dnsmasq ----------------------------------

def test_qemu_has_spice_and_usb_redirection_and_no_host_display():
    append = LAYER / "recipes-devtools" / "qemu" / "qemu_%.bbappend"
    assert {"spice", "usb-redir"} <= set(bbvars.words(append, "PACKAGECONFIG:append:class-target:vmclient"))
    assert {"sdl", "virglrenderer"} <= set(bbvars.words(append, "PACKAGECONFIG:remove:class-target:vmclient"))


def test_libvirt_builds_only_the_qemu_driver_without_sample_keys_and_with_the_sandbox():
    append = LAYER / "recipes-extended" / "libvirt" / "libvirt_%.bbappend"
    removed = set(bbvars.words(append, "PACKAGECONFIG:remove:vmclient"))
    assert {"gnutls", "lxc", "openvz", "vbox", "vmware", "esx"} <= removed
    assert "qemu" not in removed
    assert "libvirt-guests.service" in bbvars.words(append, "SYSTEMD_SERVICE:${PN}-libvirtd:remove:vmclient")
    assert "seccomp_sandbox = 1" in append.read_text()
    assert "seccomp" in bbvars.words(DISTRO, "DISTRO_FEATURES:append")


def test_system_dnsmasq_is_not_enabled_beside_libvirts():
    append = LAYER / "recipes-support" / "dnsmasq" / "dnsmasq_%.bbappend"
    assert bbvars.value(append, "SYSTEMD_AUTO_ENABLE:${PN}:vmclient") == "disable"


def test_efi_is_a_distro_feature():
    assert "efi" in bbvars.words(DISTRO, "DISTRO_FEATURES:append")


# --- defect 6: kernel modules and firmware reach the image --------------------

def test_image_installs_packagegroup_base_for_the_machines_kernel_modules():
    assert "packagegroup-base" in bbvars.words(IMAGE, "IMAGE_INSTALL")


def test_laptop_packages_and_per_device_firmware():
    assert {"networkmanager-daemon", "networkmanager-wifi", "thermald", "fwupd"} <= set(
        bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-laptop"))
    firmware = set(bbvars.words(PACKAGEGROUP, "RRECOMMENDS:${PN}-drivers"))
    assert {"linux-firmware-i915", "linux-firmware-xe", "linux-firmware-amdgpu", "linux-firmware-iwlwifi",
            "linux-firmware-ath11k", "linux-firmware-ath12k", "linux-firmware-mediatek"} <= firmware
    assert "linux-firmware" not in firmware
    assert "linux-firmware" in bbvars.words(DISTRO, "MACHINE_EXTRA_RRECOMMENDS:remove")
    roles = set(bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}"))
    assert {"${PN}-drivers", "${PN}-laptop"} <= roles


# --- defect 1: no package the pinned recipe leaves empty ----------------------

def test_uefi_guests_use_qemus_own_firmware_not_the_empty_ovmf_package():
    hypervisor = bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-hypervisor")
    assert "ovmf" not in hypervisor, "the pinned ovmf recipe puts nothing in the ovmf package"
    assert "qemu" in hypervisor
    assert "firmware descriptors" in OEQA.read_text() or "/usr/share/qemu/firmware" in OEQA.read_text()


# --- defect 10: the kernel fragment ------------------------------------------

def test_kernel_feature_is_named_once_from_the_layers_kmeta_and_marked_hardware():
    append = KERNEL / "linux-yocto_%.bbappend"
    text = "\n".join(ln for ln in append.read_text().splitlines() if not ln.startswith("#"))
    assert not re.search(r"file://[^ ;']*\.(cfg|scc)", text), "a .cfg/.scc in SRC_URI is applied again"
    assert "type=kmeta" in text
    features = re.findall(r"features/vmclient/[\w./-]+\.scc", text)
    assert features == ["features/vmclient/vmclient-kvm.scc"]
    kmeta = KERNEL / "linux-yocto" / "vmclient-kmeta"
    scc = kmeta / features[0]
    kconf = [ln.split() for ln in scc.read_text().splitlines() if ln.startswith("kconf ")]
    assert kconf and all(k[1] == "hardware" for k in kconf), kconf
    for k in kconf:
        assert (scc.parent / k[2]).is_file()


def test_kernel_fragment_lines_are_config_assignments():
    for cfg in (KERNEL / "linux-yocto" / "vmclient-kmeta").rglob("*.cfg"):
        for n, line in enumerate(cfg.read_text().splitlines(), 1):
            if line.strip() and not line.startswith("#"):
                assert re.fullmatch(r"CONFIG_[A-Z0-9_]+=(y|m|n|\d+|\".*\")", line), f"{cfg.name}:{n}: {line}"


# --- defect 7: oeqa's tools are installed; README instructions survive kas ---

def test_every_tool_the_oeqa_cases_call_is_in_the_image():
    oeqa = OEQA.read_text()
    tools = set(bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-tools"))
    if "findmnt" in oeqa:
        assert "util-linux-findmnt" in tools
    if "cryptsetup" in oeqa:
        assert "cryptsetup" in bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-services")


def test_readme_commands_survive_kas_and_name_the_admin_key():
    readme = (LAYER / "README.md").read_text()
    assert "local configuration" not in readme and "local.conf" not in readme, \
        "kas rewrites local.conf: settings go into a kas overlay"
    for line in readme.splitlines():
        if re.search(r"\bkas (build|shell)\b.*kas\.yml", line):
            assert "VMCLIENT_ADMIN_PUBKEY=" in line, f"no admin key: {line.strip()}"


# --- defect 9: no claim the layer does not make true ---------------------------

def test_layer_claims_no_encryption_at_rest_it_does_not_configure():
    texts = {p: p.read_text() for p in [*LAYER.rglob("*.md"), *LAYER.rglob("*.conf"), *LAYER.rglob("*.cfg"),
                                        *LAYER.rglob("*.bb"), *LAYER.rglob("*.wks.in")]}
    wks_text = (LAYER / "files" / "wic" / bbvars.value(IMAGE, "WKS_FILE")).read_text()
    encrypted = "crypttab" in " ".join(texts.values()) or "luks" in wks_text.lower()
    if not encrypted:
        for path, text in texts.items():
            assert not re.search(r"encrypted at rest", text, re.I), f"{path.relative_to(REPO)} claims encryption at rest"


def _consumers() -> list[Path]:
    return sorted(Path(p) for p in LAYER.rglob("*.bbappend"))


@pytest.mark.parametrize("path", _consumers(), ids=lambda p: str(p.relative_to(LAYER)))
def test_bbappends_act_only_for_the_vmclient_distro(path):
    # yocto-check-layer: adding the layer changes no other configuration.
    for name, _op, _value in bbvars.assignments(path):
        if name.startswith("FILESEXTRAPATHS"):
            continue
        assert name.endswith(":vmclient") or ":vmclient:" in name or name.endswith(":vmclient()"), \
            f"{path.name}: {name} is not scoped to the vmclient distro"
    for m in re.finditer(r"^(do_\w+)(:[\w:]+)?\(\)", path.read_text(), re.M):
        assert (m.group(2) or "").endswith(":vmclient"), f"{path.name}: {m.group(0)} is not scoped"
