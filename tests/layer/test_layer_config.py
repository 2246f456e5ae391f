"""What the layer's own files say, checked offline (CI has no layer
checkouts): the image's disk layout, the persistent state under a read-only
root, the QEMU/libvirt configuration provd needs, the kernel feature, the
laptop packages.  scripts/check-layer-resolve asserts the same against what
the pinned layers resolve them to; these catch a regression without them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from vmclient.manage import keyuse

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
    """The wks's partitions (GPT name, as wic gives it: --part-name, else
    --label -> words) in order, and its bootloader line's words, expanded
    with the distro's values."""
    wks_file = bbvars.value(IMAGE, "WKS_FILE")
    text = (LAYER / "files" / "wic" / wks_file).read_text()
    extra = {"VMCLIENT_DATA_DIR": distro_value("VMCLIENT_DATA_DIR"),
             "VMCLIENT_KERNEL_CONSOLE": distro_value("VMCLIENT_KERNEL_CONSOLE"),
             "EFI_PROVIDER": bbvars.value(DISTRO, "EFI_PROVIDER"),
             "VMCLIENT_ROOT_SLOT_SIZE": distro_value("VMCLIENT_ROOT_SLOT_SIZE")}
    parts: dict[str, list[str]] = {}
    boot: list[str] = []
    for line in expand(text, extra).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        args = shlex.split(line)
        if args[0] == "part":
            parts[option(args, "--part-name") or option(args, "--label")] = args
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


def test_wks_has_the_esp_and_two_root_slots_and_no_data_partition():
    # The data partition is created encrypted on the laptop (repart.d): one
    # in the wks would be written in plaintext, the same on every laptop.
    parts, boot = wks()
    slots = bbvars.words(DISTRO, "VMCLIENT_ROOT_SLOTS")
    assert slots == ["a", "b"]
    assert list(parts) == ["ESP", "vmroot_a", "vmroot_b"]
    assert all("--use-uuid" in p and "--ondisk" not in p for p in parts.values()), parts
    assert option(boot, "--ptable") == "gpt"
    assert option(parts["ESP"], "--source") == "bootimg_efi"


# --- defect 4 and issue 16 section 2: the encrypted data partition ------------

def _ini(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = sections.setdefault("", {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return sections


def test_data_partition_is_created_as_luks2_sealed_to_the_tpm2_on_first_boot():
    parts, _boot = wks()
    for slot in ("vmroot_a", "vmroot_b"):
        assert option(parts[slot], "--part-type") == ROOT_X86_64, "repart must never take a root slot for it"
    repart = _ini((PERSIST / "files" / "50-vmdata.conf").read_text())["Partition"]
    assert repart["Type"] == "linux-generic"
    assert repart["Encrypt"] == "tpm2"
    assert repart["Format"] == "ext4"
    assert "SizeMaxBytes" not in repart, "the data partition must take the rest of the disk"
    assert {"repart", "cryptsetup", "tpm2", "openssl"} <= set(
        bbvars.words(DISTRO, "PACKAGECONFIG:append:pn-systemd"))


def test_crypttab_unlocks_the_partition_repart_creates_and_the_mount_unit_mounts_it():
    label = _ini((PERSIST / "files" / "50-vmdata.conf").read_text())["Partition"]["Label"]
    entries = [ln.split() for ln in (PERSIST / "files" / "crypttab").read_text().splitlines()
               if ln.split() and not ln.startswith("#")]
    assert len(entries) == 1, entries
    name, device, key, options = entries[0]
    assert device == f"/dev/disk/by-partlabel/{label}"
    assert key == "-"
    assert "tpm2-device=auto" in options.split(",")
    # without the TPM2, vmclient-data-recovery.service asks (the same on every systemd)
    assert "headless=true" in options.split(",")
    mount = _ini((PERSIST / "files" / "vmclient-data.mount.in").read_text())
    assert mount["Mount"]["What"] == f"/dev/mapper/{name}"
    assert mount["Mount"]["Where"] == "@datadir@"
    requires = mount["Unit"]["Requires"].split()
    assert f"systemd-cryptsetup@{name}.service" in requires and "var-volatile-lib.service" in requires
    recipe = (PERSIST / "vmclient-persist.bb").read_text()
    assert "${VMCLIENT_DATA_MOUNT}" in bbvars.value(PERSIST / "vmclient-persist.bb", "SYSTEMD_SERVICE:${PN}")
    assert "${sysconfdir}/crypttab" in recipe


def test_qemu_image_has_free_space_for_the_data_partition():
    # runqemu boots the .wic file itself: without free space after the root
    # repart cannot create the data partition.
    text = IMAGE.read_text()
    body = re.search(r"^IMAGE_CMD:wic:append:qemuall\(\) \{\n(.*?)^\}", text, re.M | re.S)
    assert body, "no IMAGE_CMD:wic:append:qemuall"
    assert 'truncate -s +${VMCLIENT_QEMU_DATA_SPACE} "$out.wic"' in body.group(1)
    assert 'sgdisk -e "$out.wic"' in body.group(1)


def test_tpm2_tss_packages_what_systemds_tpm2_support_asks_for():
    recipes = sorted((LAYER / "recipes-tpm" / "tpm2-tss").glob("tpm2-tss_*.bb"))
    assert len(recipes) == 1, recipes
    recipe = recipes[0]
    # systemd's PACKAGECONFIG[tpm2] RDEPENDS "tpm2-tss libtss2 libtss2-tcti-device":
    # the device TCTI's package comes first, or the libtss2 glob takes it.
    assert bbvars.words(recipe, "PACKAGE_BEFORE_PN") == ["libtss2-tcti-device", "libtss2"]
    assert bbvars.words(recipe, "FILES:libtss2-tcti-device") == ["${libdir}/libtss2-tcti-device${SOLIBS}"]
    assert {"--disable-fapi", "--with-crypto=ossl"} <= set(bbvars.words(recipe, "EXTRA_OECONF"))


def test_kernel_builds_the_laptops_gpu_wifi_and_bluetooth_drivers():
    kmeta = KERNEL / "linux-yocto" / "vmclient-kmeta" / "features" / "vmclient"
    cfg = (kmeta / "vmclient-laptop.cfg").read_text()
    assert "kconf hardware vmclient-laptop.cfg" in (kmeta / "vmclient-kvm.scc").read_text()
    for driver in ("DRM_I915", "DRM_XE", "DRM_AMDGPU", "IWLWIFI", "IWLMVM", "ATH11K_PCI", "ATH12K",
                   "MT7921E", "RTW88_8822CE", "RTW89_8852BE", "BT_HCIBTUSB"):
        assert re.search(rf"^CONFIG_{driver}=m$", cfg, re.M), driver


def test_kernel_builds_in_the_tpm_and_the_efi_stub():
    cfg = (KERNEL / "linux-yocto" / "vmclient-kmeta" / "features" / "vmclient" / "vmclient-kvm.cfg").read_text()
    for option_ in ("CONFIG_TCG_TPM=y", "CONFIG_TCG_TIS=y", "CONFIG_TCG_CRB=y", "CONFIG_EFI_STUB=y"):
        assert re.search(rf"^{option_}$", cfg, re.M), option_


def test_secure_boot_builds_a_signed_uki_with_the_keys_given():
    # Always UKIs (one per slot, vmclient-ab-uki.bbclass), signed with the keys.
    assert {"uki", "image_types_verity", "vmclient-ab-uki"} <= set(bbvars.words(IMAGE, "IMAGE_CLASSES"))
    assert bbvars.value(IMAGE, "UKI_SB_KEY") == "${VMCLIENT_SB_KEY}"
    assert bbvars.value(IMAGE, "UKI_SB_CERT") == "${VMCLIENT_SB_CERT}"
    cmdline = bbvars.words(IMAGE, "UKI_CMDLINE")
    assert "ro" in cmdline and "init_fatal_reboot" in cmdline
    assert not [w for w in cmdline if w.startswith(("root=", "roothash="))], "each slot adds its own root"
    assert "${VMCLIENT_KERNEL_CONSOLE}" in cmdline
    kas = (REPO / "kas.yml").read_text()
    for var in ("VMCLIENT_SB_KEY", "VMCLIENT_SB_CERT"):
        assert re.search(rf"^  {var}:", kas, re.M), f"kas.yml env does not pass {var}"


def _function_body(text: str, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}\(\) \{{\n(.*?)^\}}", text, re.M | re.S)
    assert m, f"no {name}()"
    return m.group(1)


def test_secure_boot_signing_tool_is_built_by_the_layer_from_pinned_sources():
    # ukify signs the UKI with sbsign, which no pinned layer builds: without
    # this recipe a signed build stops in do_uki.
    found = sorted((LAYER / "recipes-devtools" / "sbsigntool").glob("sbsigntool_*.bb"))
    assert len(found) == 1, found
    recipe = found[0]
    assert "native" in bbvars.words(recipe, "BBCLASSEXTEND")
    uris = bbvars.words(recipe, "SRC_URI")
    assert any(u.startswith("git://git.kernel.org/pub/scm/linux/kernel/git/jejb/sbsigntools.git;")
               and "name=sbsigntools" in u for u in uris), uris
    assert any("destsuffix=${BB_GIT_DEFAULT_DESTSUFFIX}/lib/ccan.git" in u and "name=ccan" in u
               for u in uris), "the ccan submodule goes where sbsigntools' build expects it"
    for name in ("SRCREV_sbsigntools", "SRCREV_ccan"):
        assert re.fullmatch(r"[0-9a-f]{40}", bbvars.value(recipe, name)), name
    lic = bbvars.words(recipe, "LIC_FILES_CHKSUM")
    assert lic and all(re.fullmatch(r"file://[\w./-]+;md5=[0-9a-f]{32}", f) for f in lic), lic
    assert {"file://COPYING", "file://lib/ccan.git/licenses/LGPL-2.1"} <= {f.split(";")[0] for f in lic}


def test_secure_boot_signs_the_uki_and_the_boot_loader_with_sbsign_when_keys_are_given():
    image = bbvars.value(IMAGE, "DEPENDS")
    assert "sbsigntool-native" in image and "VMCLIENT_SB_KEY" in image, image
    # The distro gives the keys an empty default: a bbappend's shell test of
    # an unset ${VMCLIENT_SB_KEY} would otherwise see the literal text.
    for var in ("VMCLIENT_SB_KEY", "VMCLIENT_SB_CERT"):
        assert [op for name, op, _v in bbvars.assignments(DISTRO) if name == var] == ["??="], var
    append = LAYER / "recipes-core" / "systemd" / "systemd-boot_%.bbappend"
    assert "sbsigntool-native" in bbvars.value(append, "DEPENDS:append:vmclient")
    text = append.read_text()
    for task in ("do_install:append:vmclient", "do_deploy:append:vmclient"):
        body = _function_body(text, task)
        assert 'sbsign --key "${VMCLIENT_SB_KEY}" --cert "${VMCLIENT_SB_CERT}"' in body, task
        # signed from the unsigned build output, never in place
        assert re.search(r'--output .+ "\$efi"$', body, re.M), task
        assert "${B}/src/boot/systemd-boot*.efi" in body, task


# --- defect 8: no serial console first on a laptop ---------------------------

def test_laptop_kernel_command_line_has_no_serial_console_and_qemu_has_one():
    # The command line is the UKIs' (the wks's bootloader line writes no entry).
    _parts, boot = wks()
    assert option(boot, "--append") is None
    cmdline = expand(bbvars.value(IMAGE, "UKI_CMDLINE"),
                     {"VMCLIENT_KERNEL_CONSOLE": distro_value("VMCLIENT_KERNEL_CONSOLE")})
    consoles = re.findall(r"console=(\S+)", cmdline)
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


def _unit_lines(text: str, key: str) -> list[str]:
    return [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]


def test_machine_id_is_kept_on_the_data_partition_and_never_in_the_image():
    # The read-only root's /etc/machine-id is empty: PID 1 makes a new one at every
    # boot.  The first boot's is kept on the data partition and bound over it
    # before anything reads it, and journald takes it before its flush.
    assert "read-only-rootfs" in bbvars.words(IMAGE, "IMAGE_FEATURES")
    assert "machine-id" not in IMAGE.read_text().replace("vmclient-machine-id", "")
    unit = (PERSIST / "files" / "vmclient-machine-id.service.in").read_text()
    execs = _unit_lines(unit, "ExecStart")
    assert execs[0] == "@base_sbindir@/mount-copybind @datadir@/machine-id /etc/machine-id"
    assert "systemctl restart systemd-journald.service" in execs[1]
    assert _unit_lines(unit, "RequiresMountsFor") == ["@datadir@"]
    assert _unit_lines(unit, "ConditionPathIsReadWrite") == ["!/etc"]
    before = " ".join(_unit_lines(unit, "Before")).split()
    assert {"local-fs.target", "systemd-journal-flush.service"} <= set(before)
    recipe = PERSIST / "vmclient-persist.bb"
    assert "vmclient-machine-id.service" in bbvars.value(recipe, "SYSTEMD_SERVICE:${PN}")
    assert "file://vmclient-machine-id.service.in" in bbvars.words(recipe, "SRC_URI")


DATA_USERS = ("libvirtd.service", "vmclient-powerd.service", "vmclient-provd.service",
              "vmclient-syncd.service", "vmclient-recovery-key.service", "weston.service")


def test_boot_waits_for_the_recovery_key_and_nothing_that_needs_the_data_starts_without_it():
    files = PERSIST / "files"
    # /dev/mapper/vmdata requires systemd-cryptsetup@vmdata.service (the generator's
    # doing): the recovery key's prompt is in that unit, after systemd-cryptsetup's
    # TPM2 attempt (crypttab headless: exit status 1 when the TPM2 refuses)
    recovery = (files / "systemd-cryptsetup-vmdata.conf.in").read_text()
    assert _unit_lines(recovery, "SuccessExitStatus") == ["1"]
    assert _unit_lines(recovery, "ExecStart") == ["@libexecdir@/vmclient-data-recovery"]
    assert _unit_lines(recovery, "TimeoutSec") == ["infinity"]
    assert ("${systemd_system_unitdir}/systemd-cryptsetup@vmdata.service.d/50-vmclient-recovery.conf"
            in (PERSIST / "vmclient-persist.bb").read_text())
    script = (files / "vmclient-data-recovery").read_text()
    subprocess.run(["sh", "-n", str(files / "vmclient-data-recovery")], check=True)
    assert '[ -b "/dev/mapper/$name" ] && exit 0' in script  # the TPM2 opened it
    assert not re.search(r"^\s*exit 1\b|\|\| exit 1$", script, re.M), "1 counts as success"
    assert "systemd-ask-password --timeout=0" in script
    assert 'cryptsetup -v open --type luks2 --key-file=- "$dev" "$name"' in script
    # sealed again to the PCR repart sealed it to (systemd-repart's default, 7), the
    # old tpm2 keyslot wiped by a call of its own first: systemd-cryptenroll skips an
    # enrolment whose PCR policy digest is already in the header before it wipes, and
    # another TPM with the same PCR 7 has the same digest (the re-seal did not take)
    calls = re.findall(r"^.*\bsystemd-cryptenroll\b.*$", script, re.M)
    assert [c for c in calls if "--wipe-slot" in c and "--tpm2-device" in c] == [], calls
    wipe = script.index('systemd-cryptenroll --wipe-slot=tpm2 "$dev" &&')
    enrol = script.index('systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7 "$dev"')
    assert wipe < enrol
    assert "TPM2PCRs" not in (files / "50-vmdata.conf").read_text()
    # the record of the use, as vmclient-syncd's heartbeat reads it (vmclient.manage.keyuse)
    [note] = [line for line in script.splitlines() if line.endswith('> "$used"')]
    for slot, resealed, expected in (("1", "yes", (1, True)), ("", "no", (-1, False))):
        written = subprocess.run(["sh", "-c", f'slot={slot} resealed={resealed} used=/dev/stdout\n'
                                  + note], check=True, capture_output=True, text=True).stdout
        [use] = keyuse.parse_record(written)
        assert use != keyuse.UNREADABLE and (use.keyslot, use.resealed) == expected, written
    used = (files / "vmclient-recovery-key-used.service.in").read_text()
    assert "rm -f @datadir@/device/recovery-key @datadir@/device/recovery-key.pending" in used
    # what needs the partition requires vmclient-data.target, which requires it all
    users = bbvars.words(DISTRO, "VMCLIENT_DATA_USERS")
    assert set(DATA_USERS) <= set(users), users
    services = LAYER / "recipes-vmclient" / "vmclient-services" / "vmclient-services.bb"
    for unit in re.findall(r"vmclient-[a-z-]+\.service", bbvars.value(services, "SYSTEMD_SERVICE:${PN}")):
        if unit != "vmclient-boot-check.service":  # it only asks the others on the bus
            assert unit in users, f"{unit} would start without the data partition"
    dropin = _ini((files / "vmclient-data-user.conf").read_text())
    assert dropin["Unit"]["Requires"] == dropin["Unit"]["After"] == "vmclient-data.target"
    target = (files / "vmclient-data.target.in").read_text()
    assert _unit_lines(target, "Requires") == ["@units@"]
    recipe = (PERSIST / "vmclient-persist.bb").read_text()
    assert ("s#@units@#${VMCLIENT_DATA_MOUNT} ${@vmclient_persist_units(d)} "
            "vmclient-machine-id.service#g") in recipe
    assert "$unit.d/50-vmclient-data.conf" in recipe
    assert "cryptsetup" in bbvars.words(PERSIST / "vmclient-persist.bb", "RDEPENDS:${PN}")


def test_seat_users_home_is_on_the_data_partition_with_its_owner():
    data_dir = distro_value("VMCLIENT_DATA_DIR")
    extra = {"VMCLIENT_DATA_DIR": data_dir}
    binds = {expand(where, extra): expand(what, extra)
             for what, where in bbvars.lines(DISTRO, "VMCLIENT_PERSISTENT_BINDS")}
    assert binds.get("/home") == f"{data_dir}/home", binds
    weston = LAYER / "recipes-graphics" / "wayland"
    assert (weston / "weston-init" / "vmclient-home.conf").read_text().splitlines()[-1] == (
        "d @WESTON_USER_HOME@ 0700 @WESTON_USER@ @WESTON_USER@ -")
    append = (weston / "weston-init.bbappend").read_text()
    assert "${nonarch_libdir}/tmpfiles.d/vmclient-weston-home.conf" in append
    assert "file://vmclient-home.conf" in bbvars.value(weston / "weston-init.bbappend",
                                                       "SRC_URI:append:vmclient")


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


# --- issue 15: the desktop ------------------------------------------------------

WESTON_INIT = LAYER / "recipes-graphics" / "wayland"


def test_distro_has_the_features_weston_and_spice_gtk_require():
    assert {"wayland", "opengl", "pam"} <= set(bbvars.words(DISTRO, "DISTRO_FEATURES:append"))
    assert "x11" in bbvars.words(DISTRO, "DISTRO_FEATURES_OPTED_OUT")


def test_weston_runs_the_shell_in_its_kiosk_shell_and_comes_back_when_it_exits():
    conf = _ini((WESTON_INIT / "weston-init" / "weston.ini").read_text())
    assert conf["core"]["shell"] == "kiosk-shell.so"
    assert conf["autolaunch"] == {"path": "@bindir@/vmclient-shell", "watch": "true"}
    dropin = _ini((WESTON_INIT / "weston-init" / "50-vmclient.conf").read_text())
    assert dropin["Service"]["Restart"] == "always"
    append = WESTON_INIT / "weston-init.bbappend"
    assert "vmclient-shell" in bbvars.words(append, "RDEPENDS:${PN}:append:vmclient")
    assert "s,@bindir@,${bindir},g" in append.read_text()
    assert not [n for n, _op, _v in bbvars.assignments(append) if n.startswith("WESTON_USER")], \
        "Weston runs as weston-init's unprivileged user"
    assert bbvars.value(IMAGE, "SYSTEMD_DEFAULT_TARGET") == "graphical.target"
    # the seat's user calls the D-Bus API the group "vmclient" may call
    assert "-a ${WESTON_USER} -g vmclient" in bbvars.value(
        append, "GROUPMEMS_PARAM:${PN}:append:vmclient")
    assert "--system vmclient" in bbvars.value(append, "GROUPADD_PARAM:${PN}:append:vmclient")


def test_weston_starts_with_the_keyboard_layout_the_first_start_kept(tmp_path):
    """The first start's layout, kept in the seat user's home (the shell's
    ``keyboard.env``: the host's /etc is read-only), is Weston's XKB_DEFAULT_LAYOUT
    when it starts (again); weston.ini names no layout of its own, and nothing but
    that one line of a regular file reaches Weston's environment."""
    from vmclient.shell import firststart

    ini = _ini((WESTON_INIT / "weston-init" / "weston.ini").read_text())
    assert "keymap_layout" not in ini.get("keyboard", {})
    dropin = _ini((WESTON_INIT / "weston-init" / "50-vmclient.conf").read_text())["Service"]
    env_file = dropin["EnvironmentFile"].removeprefix("-")
    pre = dropin["ExecStartPre"]
    assert pre.startswith("+/bin/sh -c ") and env_file in pre  # as root: it writes /run
    append = (WESTON_INIT / "weston-init.bbappend").read_text()
    assert "s,@WESTON_USER_HOME@,${WESTON_USER_HOME},g' -e" in append
    # the command itself, as systemd runs it ("$$" is its "$"), on a home of the test's
    home, run = tmp_path / "home", tmp_path / "run"
    cmd = shlex.split(pre.removeprefix("+").replace("$$", "$")
                      .replace("@WESTON_USER_HOME@", str(home))
                      .replace("/run/vmclient", str(run)))
    kept = home / ".local/state/vmclient-shell/keyboard.env"
    kept.parent.mkdir(parents=True)

    def weston_env(text: str | None) -> str:
        kept.unlink(missing_ok=True)
        if text is not None:
            kept.write_text(text)
        subprocess.run(cmd, check=True, timeout=10)
        return (run / Path(env_file).name).read_text()
    # what the shell writes (firstsave.save_keyboard)
    assert weston_env(firststart.keyboard_text("de")) == "XKB_DEFAULT_LAYOUT=de\n"
    assert weston_env(None) == ""  # none yet: an empty environment, Weston's "us"
    assert weston_env("XKB_DEFAULT_LAYOUT=de\nLD_PRELOAD=/tmp/x.so\n") == \
        "XKB_DEFAULT_LAYOUT=de\n"
    assert weston_env("XKB_DEFAULT_LAYOUT=de;rm -rf /\n") == ""
    secret = tmp_path / "secret"
    secret.write_text("XKB_DEFAULT_LAYOUT=fr\n")
    kept.unlink()
    kept.symlink_to(secret)  # a link is not followed (root reads the user's home)
    subprocess.run(cmd, check=True, timeout=10)
    assert (run / Path(env_file).name).read_text() == ""


def test_weston_starts_with_the_scale_of_the_panel(tmp_path):
    """Before each start, as root, the drop-in writes the image's weston.ini with an
    ``[output]`` scale=2 section for each connected HiDPI panel (vmclient.shell.hidpi, from
    the EDIDs under /sys/class/drm) into /run, and Weston starts with that file."""
    from testlib import edid_block

    dropin = (WESTON_INIT / "weston-init" / "50-vmclient.conf").read_text()
    pre = [ln.removeprefix("ExecStartPre=") for ln in dropin.splitlines()
           if ln.startswith("ExecStartPre=") and "vmclient.shell.hidpi" in ln]
    starts = [ln.removeprefix("ExecStart=") for ln in dropin.splitlines()
              if ln.startswith("ExecStart=")]
    assert len(pre) == 1 and pre[0].startswith("+/usr/bin/python3 -m vmclient.shell.hidpi ")
    argv = shlex.split(pre[0].removeprefix("+"))
    drm, base, out = argv[-3:]
    assert (drm, base) == ("/sys/class/drm", "@sysconfdir@/xdg/weston/weston.ini")
    # weston-init's ExecStart replaced by the same command reading that file
    assert starts == ["", f"@bindir@/weston --modules=systemd-notify.so --config={out}"]
    append = (WESTON_INIT / "weston-init.bbappend").read_text()
    assert "-e 's,@bindir@,${bindir},g'" in append
    assert "-e 's,@sysconfdir@,${sysconfdir},g' ${UNPACKDIR}/50-vmclient.conf" in append
    # the command, on a laptop of the test's: a 13.3" 2560x1600 panel
    panel = tmp_path / "drm" / "card0-eDP-1"
    panel.mkdir(parents=True)
    (panel / "status").write_text("connected\n")
    (panel / "edid").write_bytes(edid_block(2560, 1600, 286, 179))
    run = tmp_path / "run" / Path(out).name
    subprocess.run([sys.executable, *argv[1:-3], str(panel.parent),
                    str(WESTON_INIT / "weston-init" / "weston.ini"), str(run)],
                   check=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO / "python-services" / "src")})
    conf = _ini(run.read_text())
    assert conf["output"] == {"name": "eDP-1", "scale": "2"}
    assert conf["core"]["shell"] == "kiosk-shell.so"  # the image's weston.ini as it is


def test_image_installs_the_desktop():
    assert "${PN}-desktop" in bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}")
    assert {"weston", "weston-init", "vmclient-shell", "mesa-megadriver"} <= set(
        bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-desktop"))
    # spice-gtk's GStreamer audio: its pipelines' elements, and ALSA's sink and source
    assert {"gstreamer1.0-plugins-base-app", "gstreamer1.0-plugins-base-audioconvert",
            "gstreamer1.0-plugins-base-audioresample", "gstreamer1.0-plugins-base-alsa",
            "gstreamer1.0-plugins-good-autodetect"} <= set(
        bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-desktop"))


# --- the streamed restore's NBD server -----------------------------------------

NBDKIT = LAYER / "recipes-support" / "nbdkit" / "nbdkit_%.bbappend"
SERVICES_RECIPE = LAYER / "recipes-vmclient" / "vmclient-services" / "vmclient-services.bb"
TEST_HOST_PACKAGES = REPO / "tests" / "system" / "image" / "packages.txt"


def test_image_carries_nbdkit_with_its_python_plugin_built_for_the_target():
    # provd serves a streamed restore's disks from nbdkit's Python plugin: the image
    # gets it through packagegroup-vmclient -> -services -> vmclient-services
    assert "${PN}-services" in bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}")
    assert "vmclient-services" in bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-services")
    assert {"nbdkit", "nbdkit-plugin-python"} <= set(
        bbvars.words(SERVICES_RECIPE, "RDEPENDS:${PN}"))
    # meta-networking's recipe inherits python3native only (no plugin for the target's
    # Python) and packages every plugin in nbdkit: the bbappend builds and splits it
    assert NBDKIT.is_file(), "no bbappend builds nbdkit's Python plugin"
    assert "--enable-python" in bbvars.words(NBDKIT, "EXTRA_OECONF:append:vmclient")
    assert re.search(r"^inherit_defer .*'python3targetconfig' if 'vmclient' in",
                     NBDKIT.read_text(), re.M), "python3targetconfig, for the vmclient distro"
    assert "${PN}-plugin-python" in bbvars.words(NBDKIT, "PACKAGES:prepend:vmclient")
    assert bbvars.words(NBDKIT, "FILES:${PN}-plugin-python:append:vmclient") == [
        "${libdir}/nbdkit/plugins/nbdkit-python-plugin.so"]
    assert {"${PN}", "python3-core"} <= set(
        bbvars.words(NBDKIT, "RDEPENDS:${PN}-plugin-python:append:vmclient"))


def test_test_host_carries_nbdkit_and_its_python_plugin_as_the_image_does():
    packages = {ln.split("#")[0].strip() for ln in TEST_HOST_PACKAGES.read_text().splitlines()}
    assert {"nbdkit", "nbdkit-plugin-python"} <= packages


# --- defect 6: kernel modules and firmware reach the image --------------------

def test_image_installs_packagegroup_base_for_the_machines_kernel_modules():
    assert "packagegroup-base" in bbvars.words(IMAGE, "IMAGE_INSTALL")


def test_laptop_packages_and_per_device_firmware():
    assert {"networkmanager-daemon", "networkmanager-wifi", "thermald", "fwupd"} <= set(
        bbvars.words(PACKAGEGROUP, "RDEPENDS:${PN}-laptop"))
    firmware = set(bbvars.words(PACKAGEGROUP, "RRECOMMENDS:${PN}-drivers"))
    assert {"linux-firmware-i915", "linux-firmware-xe", "linux-firmware-amdgpu", "linux-firmware-iwlwifi",
            "linux-firmware-ath11k", "linux-firmware-ath12k", "linux-firmware-mediatek",
            "linux-firmware-ibt", "linux-firmware-qca", "linux-firmware-rtl8822", "linux-firmware-rtl8852"} <= firmware
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


def test_runqemu_gives_the_host_a_tpm2_for_the_data_partitions_key():
    setup = bbvars.value(IMAGE, "QB_SETUP_CMD:qemuall")
    assert "swtpm socket --tpm2" in setup and "--daemon" in setup
    opts = bbvars.value(IMAGE, "QB_OPT_APPEND:append:qemuall")
    assert "-tpmdev emulator" in opts and "-device tpm-crb" in opts
    sock = re.search(r"--ctrl type=unixio,path=([^ ,]+)", setup).group(1)
    assert ",terminate" in setup, "a swtpm left running blocks the next runqemu"
    assert f"path={sock}" in opts, "QEMU connects to another socket than swtpm listens on"
