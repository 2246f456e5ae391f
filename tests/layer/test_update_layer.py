"""The A/B host update in the layer (meta-vmclient/PLAN-update.md), checked
offline: RAUC's system.conf against the wks's root slots, the bundle, the
keys from the build host, the verified root bound into each slot's UKI, the
initramfs module that opens it, RAUC's systemd-boot backend (run here, on a
directory standing for the ESP) and the boot-complete gate.  The slot and
gate rules are scripts/check-layer-resolve's own, applied to the layer's
files; check-layer-resolve applies them to what bitbake resolves."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from . import bbvars
from .layerutil import LAYER, REPO, SERVICES
from .test_check_layer import _resolve_module

pytestmark = pytest.mark.layer

DISTRO = LAYER / "conf" / "distro" / "vmclient.conf"
IMAGE = LAYER / "recipes-core" / "images" / "vmclient-image.bb"
SYSTEM_CONF = LAYER / "recipes-core" / "rauc" / "files" / "system.conf"
RAUC_CONF = LAYER / "recipes-core" / "rauc" / "rauc-conf.bbappend"
BUNDLE = LAYER / "recipes-core" / "bundles" / "vmclient-bundle.bb"
HOOK = LAYER / "recipes-core" / "bundles" / "files" / "vmclient-bundle-hook"
UPDATE = LAYER / "recipes-core" / "vmclient-update" / "vmclient-update.bb"
BACKEND = LAYER / "recipes-core" / "vmclient-update" / "files" / "rauc-boot-backend"
CLASS = LAYER / "classes-recipe" / "vmclient-ab-uki.bbclass"
MODULE = LAYER / "recipes-core" / "initrdscripts" / "files" / "vmclient-verity"
BOOT_CHECK = SERVICES / "data" / "systemd" / "vmclient-boot-check.service"
WKS = LAYER / "files" / "wic" / "vmclient-efi.wks.in"


def _wks_text() -> str:
    """The wks with the distro's values for the variables the rules read."""
    values = {"VMCLIENT_ROOT_SLOT_SIZE": bbvars.value(DISTRO, "VMCLIENT_ROOT_SLOT_SIZE"),
              "EFI_PROVIDER": "systemd-boot", "IMGDEPLOYDIR": "/deploy",
              "IMAGE_LINK_NAME": "vmclient-image-genericx86-64.rootfs"}
    return re.sub(r"\$\{([A-Za-z0-9_]+)\}", lambda m: values.get(m.group(1), m.group(0)), WKS.read_text())


def _system_conf() -> str:
    """system.conf as rauc-conf's do_install fills it in."""
    text = SYSTEM_CONF.read_text()
    filled = {"@COMPATIBLE@": "vmclient-genericx86-64", "@VERSION@": "0.1", "@DATADIR@": "/var/lib/vmclient",
              "@KEYRING@": "/usr/lib/rauc/ca.crt", "@BACKEND@": "/usr/lib/vmclient/rauc-boot-backend",
              "@TRIES@": "3"}
    for key, value in filled.items():
        text = text.replace(key, value)
    return text


def _slots() -> list[str]:
    return bbvars.words(DISTRO, "VMCLIENT_ROOT_SLOTS")


# --- the slots: RAUC's system.conf and the wks agree --------------------------------

def test_rauc_system_conf_slots_are_the_wks_root_slots():
    m = _resolve_module()
    parts = m.wks_partitions(_wks_text())
    assert m.root_slot_problems(parts, _slots(), "vmroot_") == []
    assert m.rauc_conf_problems(_system_conf(), parts, _slots(), "vmroot_",
                                "/usr/lib/vmclient/rauc-boot-backend") == []
    # every placeholder is one do_install fills in
    install = RAUC_CONF.read_text()
    for placeholder in sorted(set(re.findall(r"@[A-Z]+@", SYSTEM_CONF.read_text()))):
        assert f"-e 's#{placeholder}#" in install, placeholder
    # the data partition is none of RAUC's business
    assert "vmdata" not in SYSTEM_CONF.read_text()


def test_resolve_slot_rules_catch_a_relabelled_slot_and_a_slot_the_disk_lacks():
    m = _resolve_module()
    text = _wks_text()
    # wic's rawcopy runs tune2fs -L for a --label: the root would no longer match its hash
    relabelled = text.replace("--fstype=none --part-name vmroot_a", "--fstype=ext4 --label vmroot_a")
    problems = m.root_slot_problems(m.wks_partitions(relabelled), _slots(), "vmroot_")
    assert any("--label" in p for p in problems) and any("--fstype" in p for p in problems), problems
    # the layout before the update: one root, no slots
    single = 'part / --source rootfs --fstype=ext4 --label vmroot --part-type 4f68bce3-e8cd-4db1-96e7-fbcaf984b709\n'
    assert m.root_slot_problems(m.wks_partitions(single), _slots(), "vmroot_")
    parts = m.wks_partitions(text)
    renamed = _system_conf().replace("vmroot_b", "vmroot_c")
    problems = m.rauc_conf_problems(renamed, parts, _slots(), "vmroot_", "/usr/lib/vmclient/rauc-boot-backend")
    assert any("not the wks's" in p for p in problems), problems
    plain = _system_conf().replace("bundle-formats=verity", "bundle-formats=plain verity")
    assert m.rauc_conf_problems(plain, parts, _slots(), "vmroot_", "/usr/lib/vmclient/rauc-boot-backend")


def test_root_slots_hold_the_verified_root_of_one_fixed_size():
    parts = {p["name"]: p["args"] for p in _resolve_module().wks_partitions(_wks_text())}
    a, b = parts["vmroot_a"], parts["vmroot_b"]
    assert "file=/deploy/vmclient-image-genericx86-64.rootfs.ext4.verity" in " ".join(a)
    assert "--source" not in b
    # bootctl and systemd-bless-boot find the ESP by its type
    esp = parts["ESP"]
    assert esp[esp.index("--part-type") + 1] == "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
    assert bbvars.value(DISTRO, "VMCLIENT_ROOT_SLOT_SIZE").endswith("M")
    assert set(bbvars.words(IMAGE, "IMAGE_FSTYPES:append")) >= {"ext4", "verity"}
    salt = bbvars.value(IMAGE, "VERITY_SALT")
    assert re.fullmatch(r"[0-9a-f]{64}", salt)
    assert salt != "4e5f0d9b6ccac5e843598d4e4545046232b48451a399acb2106822b43679b375", "the class's default salt"
    assert bbvars.value(IMAGE, "INITRAMFS_IMAGE") == "vmclient-initramfs"


# --- keys and the bundle ------------------------------------------------------------

def test_rauc_keys_come_from_the_build_host_and_the_image_is_refused_without_a_keyring():
    kas = (REPO / "kas.yml").read_text()
    for var in ("VMCLIENT_RAUC_KEYRING", "VMCLIENT_RAUC_KEY", "VMCLIENT_RAUC_CERT"):
        assert re.search(rf"^  {var}: null$", kas, re.M), f"kas.yml env does not pass {var}"
        assert [op for name, op, _v in bbvars.assignments(DISTRO) if name == var] == ["??="], var
        assert bbvars.value(DISTRO, var) == ""
    append = RAUC_CONF.read_text()
    assert bbvars.value(RAUC_CONF, "RAUC_KEYRING_URI:vmclient") == "file://${VMCLIENT_RAUC_KEYRING}"
    assert "raise bb.parse.SkipRecipe(\"VMCLIENT_RAUC_KEYRING is not set" in append
    assert "PRIVATE KEY" in append, "a private key given as the keyring is refused"
    # the image needs rauc-conf: a skipped rauc-conf stops the image with that message
    pg = LAYER / "recipes-core" / "packagegroups" / "packagegroup-vmclient.bb"
    assert {"rauc", "rauc-conf", "vmclient-update"} <= set(bbvars.words(pg, "RDEPENDS:${PN}-services"))
    assert "rauc" in bbvars.words(DISTRO, "DISTRO_FEATURES:append")
    assert "rauc" in (LAYER / "conf" / "layer.conf").read_text().split("LAYERDEPENDS_vmclient")[1]


def test_bundle_is_a_signed_verity_bundle_of_the_root_with_every_slots_uki():
    assert re.search(r"^inherit bundle$", BUNDLE.read_text(), re.M)
    assert bbvars.value(BUNDLE, "RAUC_BUNDLE_FORMAT") == "verity"
    assert bbvars.value(BUNDLE, "RAUC_KEY_FILE") == "${VMCLIENT_RAUC_KEY}"
    assert bbvars.value(BUNDLE, "RAUC_CERT_FILE") == "${VMCLIENT_RAUC_CERT}"
    assert bbvars.value(BUNDLE, "RAUC_BUNDLE_COMPATIBLE") == "${VMCLIENT_RAUC_COMPATIBLE}"
    assert bbvars.value(BUNDLE, "RAUC_SLOT_rootfs") == "vmclient-image"
    text = BUNDLE.read_text()
    assert 'RAUC_SLOT_rootfs[fstype] = "ext4.verity"' in text
    assert 'RAUC_SLOT_rootfs[imagetype] = "raw"' in text
    assert 'RAUC_SLOT_rootfs[hooks] = "post-install"' in text
    assert "VMCLIENT_ROOT_SLOTS" in bbvars.value(BUNDLE, "RAUC_BUNDLE_EXTRA_FILES")
    assert "SkipRecipe(\"%s is not set" in text
    # uncompressed and reproducible: the next release shares the unchanged chunks
    assert "--mksquashfs-args='-noI -noD -noF -noX -all-root -mkfs-time 0'" in bbvars.value(
        BUNDLE, "BUNDLE_ARGS")


def test_bundle_hook_puts_the_new_slots_uki_on_the_esp(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "vmclient-b.efi").write_bytes(b"UKI for slot b")
    esp = tmp_path / "esp"
    (esp / "EFI" / "vmclient").mkdir(parents=True)
    (esp / "EFI" / "vmclient" / "vmclient-b.efi").write_bytes(b"old UKI")
    env = {**os.environ, "VMCLIENT_ESP": str(esp), "RAUC_SLOT_CLASS": "rootfs",
           "RAUC_SLOT_BOOTNAME": "b", "RAUC_BUNDLE_MOUNT_POINT": str(bundle)}
    subprocess.run(["sh", str(HOOK), "slot-post-install"], env=env, check=True, timeout=10)
    assert (esp / "EFI" / "vmclient" / "vmclient-b.efi").read_bytes() == b"UKI for slot b"
    assert sorted(p.name for p in (esp / "EFI" / "vmclient").iterdir()) == ["vmclient-b.efi"]
    (bundle / "vmclient-b.efi").unlink()
    proc = subprocess.run(["sh", str(HOOK), "slot-post-install"], env=env, capture_output=True, text=True,
                          timeout=10, check=False)
    assert proc.returncode != 0 and "no UKI for slot b" in proc.stderr


# --- each slot's UKI is bound to its root hash ---------------------------------------------

def _class_functions() -> dict:
    """The plain python functions of vmclient-ab-uki.bbclass."""
    text = CLASS.read_text()
    namespace: dict = {}
    for name in ("vmclient_verity_params", "vmclient_slot_cmdline", "vmclient_boot_entry"):
        m = re.search(rf"^def {name}\(.*?(?=^\S)", text, re.M | re.S)
        assert m, name
        exec(m.group(0), namespace)  # the layer's own code
    return namespace


# What image_types_verity writes (veritysetup format --no-superblock's output).
VERITY_PARAMS = """VERITY_HASH_TYPE=1
VERITY_DATA_BLOCKS=262144
VERITY_DATA_BLOCK_SIZE=4096
VERITY_HASH_BLOCKS=2065
VERITY_HASH_BLOCK_SIZE=4096
VERITY_HASH_ALGORITHM=sha256
VERITY_SALT=8c13bae0214306e2663887fb9d6f6a4833cbd8c6ea6ebf8132a7ab2acdbcabaa
VERITY_ROOT_HASH=5f0c0e0a4e1c3f9d7b2a6c8e0f1d3b5a7c9e1f3d5b7a9c1e3f5d7b9a1c3e5f70
VERITY_DATA_SECTORS=2097152"""


def test_each_slots_command_line_opens_that_slot_through_dm_verity_with_the_root_hash():
    f = _class_functions()
    params = f["vmclient_verity_params"](VERITY_PARAMS)
    base = "rootwait rootfstype=ext4 ro init_fatal_reboot console=tty0"
    words = f["vmclient_slot_cmdline"]("b", params, base).split()
    assert "roothash=" + params["VERITY_ROOT_HASH"] in words
    assert "systemd.verity_root_data=PARTLABEL=vmroot_b" in words
    assert "systemd.verity_root_hash=PARTLABEL=vmroot_b" in words
    assert "root=/dev/mapper/root" in words and "rauc.slot=b" in words
    listed = next(w for w in words if w.startswith("systemd.verity_root_options=")).split("=", 1)[1].split(",")
    options = dict(o.split("=", 1) for o in listed if "=" in o)
    assert options["superblock"] == "false"
    # a modified block restarts the laptop when read (boot counting falls
    # back); without it dm-verity only fails the read and the boot goes on
    assert [o for o in listed if "=" not in o] == ["restart-on-corruption"]
    assert options["hash-offset"] == str(2097152 * 512) == str(262144 * 4096), "the tree follows the data"
    assert options["salt"] == params["VERITY_SALT"] and options["hash"] == "sha256"
    assert words[-len(base.split()):] == base.split()
    with pytest.raises(ValueError, match="VERITY_ROOT_HASH"):
        f["vmclient_slot_cmdline"]("a", {k: v for k, v in params.items() if k != "VERITY_ROOT_HASH"}, base)


def test_uki_is_built_after_the_hash_tree_for_every_slot_and_goes_beside_its_entry():
    text = CLASS.read_text()
    assert re.search(r"^addtask uki after do_image_verity before do_image_wic$", text, re.M)
    assert 'do_uki[prefuncs] += "vmclient_uki_first_slot"' in text
    assert 'do_uki[postfuncs] += "vmclient_uki_other_slots"' in text
    assert "bb.build.exec_func('do_uki', localdata)" in text
    assert 'IMAGE_TYPEDEP:wic:append = " verity"' in text
    assert bbvars.value(CLASS, "VMCLIENT_UKI_DIR") == "EFI/vmclient", "not EFI/Linux: listed twice"


def _run_module(tmp_path, cmdline: dict[str, str], device: str) -> tuple[subprocess.CompletedProcess, str]:
    """The initramfs module under a harness standing for initramfs-framework's
    init (bootparam_* variables, fatal, msg) with a veritysetup that records
    its arguments."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "veritysetup.args"
    (bin_ / "veritysetup").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(log))}\n')
    (bin_ / "veritysetup").chmod(0o755)
    assigns = "".join(f"bootparam_{k}={shlex.quote(v.replace('@DEV@', device))}\n" for k, v in cmdline.items())
    script = (f"{assigns}fatal() {{ echo \"FATAL: $1\"; exit 1; }}\nmsg() {{ :; }}\n"
              f". {shlex.quote(str(MODULE))}\n"
              "vmclient_verity_enabled || { echo disabled; exit 0; }\n"
              "vmclient_verity_run\necho \"root=$bootparam_root\"\n")
    proc = subprocess.run(["sh", "-c", script], env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=30, check=False)
    return proc, (log.read_text() if log.exists() else "")


def _block_device() -> str:
    for name in sorted(os.listdir("/dev")):
        path = f"/dev/{name}"
        if Path(path).is_block_device():
            return path
    pytest.skip("no block device under /dev for the module to wait for")


def test_initramfs_module_opens_the_slot_with_the_command_lines_parameters(tmp_path):
    f = _class_functions()
    params = f["vmclient_verity_params"](VERITY_PARAMS)
    words = f["vmclient_slot_cmdline"]("a", params, "ro").split()
    cmdline = {}
    for w in words:
        key, _, value = w.partition("=")
        cmdline[key.replace(".", "_").replace("-", "_")] = value or "true"
    # the slot's partition, as udev would show it, is a block device here
    cmdline["systemd_verity_root_data"] = cmdline["systemd_verity_root_hash"] = "@DEV@"
    dev = _block_device()
    proc, args = _run_module(tmp_path, cmdline, dev)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("root=/dev/mapper/root")
    assert args.split("\n")[:5] == ["open", dev, "root", dev, params["VERITY_ROOT_HASH"]]
    assert {"--no-superblock", f"--hash-offset={2097152 * 512}", f"--salt={params['VERITY_SALT']}",
            "--data-blocks=262144", "--hash=sha256", "--restart-on-corruption"} <= set(args.split())
    # no roothash: the module stays out of the way (lab boots without verity)
    proc, _args = _run_module(tmp_path, {"root": "/dev/sda2"}, dev)
    assert proc.stdout.strip() == "disabled"
    # a root hash without a device is an error, not a boot of whatever root= says
    proc, _args = _run_module(tmp_path, {"roothash": params["VERITY_ROOT_HASH"]}, dev)
    assert proc.returncode != 0 and "without systemd.verity_root_data" in proc.stdout


def test_initramfs_module_takes_veritytabs_flags_and_refuses_unknown_options(tmp_path):
    dev = _block_device()
    base = {"roothash": "ab" * 32, "systemd_verity_root_data": dev}
    flags = ["restart-on-corruption", "panic-on-corruption", "ignore-corruption", "ignore-zero-blocks",
             "check-at-most-once"]
    for flag in flags:
        proc, args = _run_module(tmp_path, {**base, "systemd_verity_root_options": f"superblock=false,{flag}"}, dev)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert args.split("\n")[5:7] == ["--no-superblock", f"--{flag}"]
    # veritytab's systemd-only options and anything else: refused, not passed on or dropped
    for opt in ("nofail", "x-initrd.attach", "restart", "--restart-on-corruption", "superblock"):
        (tmp_path / "veritysetup.args").unlink(missing_ok=True)
        proc, args = _run_module(tmp_path, {**base, "systemd_verity_root_options": f"hash=sha256,{opt}"}, dev)
        assert proc.returncode != 0 and f"cannot use the option '{opt}'" in proc.stdout, opt
        assert args == "", "veritysetup ran"


def test_initramfs_framework_runs_the_module_under_the_name_it_is_installed_as(tmp_path):
    """initramfs-framework's init runs each /init.d/NN-NAME as the functions
    NAME_enabled and NAME_run, NAME being what follows the first "-" up to the
    next one (`basename $m | cut -d'-' -f 2`): under a name with another "-"
    in it the module's functions are never called."""
    module = LAYER / "recipes-core" / "initrdscripts" / "initramfs-module-vmclient-verity_1.0.bb"
    text = module.read_text()
    installed = re.search(r"\$\{D\}(/init\.d/\S+)$", text, re.M).group(1)
    assert f'FILES:${{PN}} += "{installed}"' in text
    # init's own loop (openembedded-core's initramfs-framework/init), over the module
    init_d = tmp_path / "init.d"
    init_d.mkdir()
    (init_d / Path(installed).name).write_text(MODULE.read_text())
    script = (f"for m in {shlex.quote(str(init_d))}/*; do\n"
              "    module=`basename $m | cut -d'-' -f 2`\n"
              "    . $m\n"
              "    if ! eval \"${module}_enabled\"; then echo \"skipped $module\"; continue; fi\n"
              "    echo \"run $module\"\n"
              "done\n")
    proc = subprocess.run(["sh", "-c", script], env={**os.environ, "bootparam_roothash": "ab" * 32},
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout.startswith("run "), proc.stdout + proc.stderr
    name = proc.stdout.split()[1]
    assert re.search(rf"^{name}_run\(\)", MODULE.read_text(), re.M)


def test_initramfs_opens_the_verified_root_and_the_kernel_can():
    initramfs = LAYER / "recipes-core" / "images" / "vmclient-initramfs.bb"
    assert "initramfs-module-vmclient-verity" in bbvars.words(initramfs, "INITRAMFS_SCRIPTS")
    module = LAYER / "recipes-core" / "initrdscripts" / "initramfs-module-vmclient-verity_1.0.bb"
    assert "cryptsetup" in bbvars.words(module, "RDEPENDS:${PN}")
    installed = re.search(r"\$\{D\}(/init\.d/\S+)$", module.read_text(), re.M).group(1)
    assert installed < "/init.d/90-rootfs", "before 90-rootfs"
    cfg = (LAYER / "recipes-kernel" / "linux" / "linux-yocto" / "vmclient-kmeta" / "features" / "vmclient"
           / "vmclient-kvm.cfg").read_text()
    assert re.search(r"^CONFIG_DM_VERITY=y$", cfg, re.M)


# --- RAUC's systemd-boot backend, run on a directory standing for the ESP -------------

def _backend(tmp_path) -> Path:
    text = BACKEND.read_text().replace("@TRIES@", bbvars.value(DISTRO, "VMCLIENT_BOOT_TRIES").strip("?"))
    text = text.replace("@SLOTS@", " ".join(_slots()))
    path = tmp_path / "rauc-boot-backend"
    path.write_text(text)
    path.chmod(0o755)
    return path


def _esp(tmp_path) -> Path:
    """The factory ESP: slot a's UKI and the entry the image writes for it."""
    esp = tmp_path / "esp"
    (esp / "loader" / "entries").mkdir(parents=True)
    (esp / "EFI" / "vmclient").mkdir(parents=True)
    (esp / "EFI" / "vmclient" / "vmclient-a.efi").write_bytes(b"UKI a")
    entry = _class_functions()["vmclient_boot_entry"]("a", "vmclient-0", "EFI/vmclient")
    (esp / "loader" / "entries" / "vmclient-a.conf").write_text(entry)
    return esp


def _call(backend, esp, *args, cmdline=None, check=True):
    env = {**os.environ, "VMCLIENT_ESP": str(esp)}
    if cmdline is not None:
        env["VMCLIENT_CMDLINE"] = str(cmdline)
    proc = subprocess.run([str(backend), *args], env=env, capture_output=True, text=True, timeout=10,
                          check=False)
    if check:
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc


def _entries(esp) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((esp / "loader" / "entries").iterdir())}


def _boot(esp, slot, outcome):
    """What systemd-boot does to a counting entry when it boots it, and what
    systemd-bless-boot does after boot-complete.target."""
    entries = esp / "loader" / "entries"
    f = next(entries.glob(f"vmclient-{slot}+*.conf"))
    left, _, done = f.stem.split("+", 1)[1].partition("-")
    left, done = int(left), int(done or 0)
    tried = entries / f"vmclient-{slot}+{max(left - 1, 0)}-{done + 1}.conf"
    f.rename(tried)
    if outcome == "good":
        tried.rename(entries / f"vmclient-{slot}.conf")


def test_backend_installs_a_slot_on_trial_and_falls_back_after_its_tries(tmp_path):
    backend, esp = _backend(tmp_path), _esp(tmp_path)
    assert _call(backend, esp, "get-primary").stdout.strip() == "a"
    assert _call(backend, esp, "get-state", "a").stdout.strip() == "good"
    assert _call(backend, esp, "get-state", "b").stdout.strip() == "bad"  # nothing installed
    # RAUC marks the target bad before writing it: no entry yet, nothing to do
    _call(backend, esp, "set-state", "b", "bad")
    # without the UKI the bundle's hook puts there, b cannot become primary
    proc = _call(backend, esp, "set-primary", "b", check=False)
    assert proc.returncode != 0 and "no UKI" in proc.stderr
    (esp / "EFI" / "vmclient" / "vmclient-b.efi").write_bytes(b"UKI b")
    _call(backend, esp, "set-primary", "b")
    entries = _entries(esp)
    assert sorted(entries) == ["vmclient-a.conf", "vmclient-b+3.conf"]
    assert "sort-key vmclient-0" in entries["vmclient-b+3.conf"]
    assert "uki /EFI/vmclient/vmclient-b.efi" in entries["vmclient-b+3.conf"]
    assert "sort-key vmclient-1" in entries["vmclient-a.conf"]
    assert _call(backend, esp, "get-primary").stdout.strip() == "b"
    # three boots that never reach boot-complete.target
    for _ in range(3):
        assert _call(backend, esp, "get-primary").stdout.strip() == "b"
        _boot(esp, "b", "bad")
    assert sorted(_entries(esp)) == ["vmclient-a.conf", "vmclient-b+0-3.conf"]
    # systemd-boot sorts an entry with no tries left last: a boots again
    assert _call(backend, esp, "get-primary").stdout.strip() == "a"
    assert _call(backend, esp, "get-state", "b").stdout.strip() == "bad"
    assert _call(backend, esp, "get-state", "a").stdout.strip() == "good"
    assert not list((esp / "loader" / "entries").glob(".*")), "no temporary file left"


def test_backend_slot_that_reaches_boot_complete_stays_primary(tmp_path):
    backend, esp = _backend(tmp_path), _esp(tmp_path)
    (esp / "EFI" / "vmclient" / "vmclient-b.efi").write_bytes(b"UKI b")
    _call(backend, esp, "set-primary", "b")
    _boot(esp, "b", "bad")  # one failed attempt, then a good one
    _boot(esp, "b", "good")  # systemd-bless-boot removes the counter
    assert sorted(_entries(esp)) == ["vmclient-a.conf", "vmclient-b.conf"]
    assert _call(backend, esp, "get-primary").stdout.strip() == "b"
    assert _call(backend, esp, "get-state", "b").stdout.strip() == "good"
    # the next update goes to a: a on trial, b the fallback
    _call(backend, esp, "set-state", "a", "bad")
    assert sorted(_entries(esp)) == ["vmclient-a+0-0.conf", "vmclient-b.conf"]
    assert _call(backend, esp, "get-primary").stdout.strip() == "b"
    _call(backend, esp, "set-primary", "a")
    assert sorted(_entries(esp)) == ["vmclient-a+3.conf", "vmclient-b.conf"]
    assert "sort-key vmclient-1" in _entries(esp)["vmclient-b.conf"]
    assert _call(backend, esp, "get-primary").stdout.strip() == "a"
    # `rauc status mark-good` on the running slot does what systemd-bless-boot does
    _call(backend, esp, "set-state", "a", "good")
    assert sorted(_entries(esp)) == ["vmclient-a.conf", "vmclient-b.conf"]


def test_backend_entry_is_the_images_first_entry_and_names_the_running_slot(tmp_path):
    backend, esp = _backend(tmp_path), _esp(tmp_path)
    factory = _entries(esp)["vmclient-a.conf"]
    _call(backend, esp, "set-state", "a", "good")  # rewritten by the backend
    assert _entries(esp)["vmclient-a.conf"] == factory
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("roothash=00 rauc.slot=b root=/dev/mapper/root ro\n")
    assert _call(backend, esp, "get-current", cmdline=cmdline).stdout.strip() == "b"
    for args in (("set-primary", "c"), ("get-state", "x"), ("set-state", "a", "maybe"), ("frobnicate",)):
        proc = _call(backend, esp, *args, check=False)
        assert proc.returncode != 0 and proc.stderr.startswith("rauc-boot-backend: "), args
    assert bbvars.value(DISTRO, "VMCLIENT_BOOT_TRIES") == "3"
    update = UPDATE.read_text()
    assert "s#@TRIES@#${VMCLIENT_BOOT_TRIES}#" in update and "s#@SLOTS@#${VMCLIENT_ROOT_SLOTS}#" in update


# --- the boot-complete gate ------------------------------------------------------------

def _bus_names() -> list[str]:
    names = []
    for unit in ("vmclient-powerd.service", "vmclient-provd.service", "vmclient-syncd.service"):
        m = re.search(r"^BusName=(\S+)$", (SERVICES / "data" / "systemd" / unit).read_text(), re.M)
        assert m, unit
        names.append(m.group(1))
    return names


def test_boot_complete_waits_for_the_three_daemons_to_answer_on_the_bus():
    m = _resolve_module()
    text = BOOT_CHECK.read_text()
    assert m.boot_check_problems(text, _bus_names()) == []
    # the rule fails a gate that boot-complete.target does not require, or one that skips a daemon
    assert m.boot_check_problems(text.replace("RequiredBy=", "WantedBy="), _bus_names())
    syncd = _bus_names()[2]
    missing = "\n".join(ln for ln in text.splitlines() if f" call {syncd} " not in ln)
    assert any(syncd in p for p in m.boot_check_problems(missing, _bus_names()))
    # systemd-bless-boot marks the slot good, not meta-rauc's rauc-mark-good as well
    assert "rauc-mark-good" in bbvars.words(IMAGE, "BAD_RECOMMENDATIONS")


# --- the oeqa cases (run by testimage on a build host, not here) -----------------

OEQA_CASES = LAYER / "lib" / "oeqa" / "runtime" / "cases"
# What the cases may import: the standard library and these oeqa modules of
# the pinned openembedded-core (meta/lib/oeqa/...).
OEQA_MODULES = {"oeqa.core.decorator.depends", "oeqa.runtime.case", "oeqa.runtime.decorator.package"}


@pytest.mark.parametrize("path", sorted(OEQA_CASES.glob("*.py")), ids=lambda p: p.name)
def test_oeqa_case_compiles_and_imports_only_what_testimage_provides(path):
    import ast
    import sys

    tree = ast.parse(path.read_text(), filename=str(path))
    compile(tree, str(path), "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            assert name in OEQA_MODULES or name.split(".")[0] in sys.stdlib_module_names, \
                f"{path.name}: imports {name}"
    layers = os.environ.get("VMCLIENT_LAYERS_DIR")
    if layers:
        lib = Path(layers) / "openembedded-core" / "meta" / "lib"
        for module in OEQA_MODULES:
            assert (lib / (module.replace(".", "/") + ".py")).is_file(), module
    # every test depends on a test that exists
    tests = {f"{path.stem}.{c.name}.{f.name}" for c in ast.walk(tree) if isinstance(c, ast.ClassDef)
             for f in c.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    for dep in re.findall(r"@OETestDepends\(\['([\w.]+)'\]\)", path.read_text()):
        assert dep in tests or dep.startswith(("ssh.", "vmclient.")), f"{path.name}: depends on {dep}"


def test_testimage_runs_the_update_case_with_the_bundle_built():
    text = (REPO / "conf" / "kas" / "testimage.yml").read_text()
    assert re.search(r'TEST_SUITES = ".*\bvmclient_update\b', text)
    assert 'TESTIMAGEDEPENDS:append:pn-vmclient-image = " vmclient-bundle:do_deploy"' in text
    case = (OEQA_CASES / "vmclient_update.py").read_text()
    for tool in ("veritysetup", "findmnt", "python3", "rauc "):
        assert tool in case
    pg = (LAYER / "recipes-core" / "packagegroups" / "packagegroup-vmclient.bb")
    assert "util-linux-findmnt" in bbvars.words(pg, "RDEPENDS:${PN}-tools")
    assert "cryptsetup" in bbvars.words(pg, "RDEPENDS:${PN}-services")


def test_documented_build_commands_name_the_update_keyring_the_image_needs():
    for doc in (REPO / "README.md", LAYER / "README.md"):
        for line in doc.read_text().splitlines():
            if re.search(r"\bkas (build|shell)\b.*kas\.yml", line):
                assert "VMCLIENT_RAUC_KEYRING=" in line, f"{doc.name}: {line.strip()}"
    plan = (LAYER / "PLAN-update.md").read_text()
    for part in ("vmroot_a", "rauc-boot-backend", "vmclient-boot-check.service", "roothash=",
                 "VMCLIENT_RAUC_KEYRING", "Only on a build host"):
        assert part in plan, part


# --- check-layer-resolve's bundle and verity rules, over resolved values -------------

class _Resolved:
    """The datastore calls the rules make, over values as bitbake resolves them."""

    def __init__(self, values, flags=None, classes=()):
        self.values = {**values, "__inherit_cache": [f"/layers/classes-recipe/{c}.bbclass" for c in classes]}
        self.flags = flags or {}

    def getVar(self, name, expand=True):  # bitbake's datastore API
        return self.values.get(name)

    def getVarFlag(self, name, flag):
        return self.flags.get(name, {}).get(flag)

    def getVarFlags(self, name):
        return self.flags.get(name, {})


class _Tinfoil:
    def __init__(self, recipes, runtime=None):
        self.recipes, self.runtime = recipes, runtime or {}

    def parse_recipe(self, pn):
        if pn not in self.recipes:
            raise RuntimeError(f"Nothing PROVIDES '{pn}'")
        return self.recipes[pn]

    def get_runtime_providers(self, name):
        return ([name], name) if name in self.runtime else ([], None)

    def parse_recipe_file(self, fn):
        return self.runtime[fn]


KEYS = {"VMCLIENT_RAUC_KEY": "/keys/update.key", "VMCLIENT_RAUC_CERT": "/keys/update.crt"}
# vmclient-bundle as the pinned meta-rauc and this layer resolve it
BUNDLE_RESOLVED = {
    "values": {**KEYS, "RAUC_BUNDLE_FORMAT": "verity", "RAUC_BUNDLE_SLOTS": "rootfs",
               "RAUC_SLOT_rootfs": "vmclient-image", "VMCLIENT_ROOT_SLOTS": "a b",
               "RAUC_BUNDLE_EXTRA_FILES": "vmclient-a.efi vmclient-b.efi",
               "RAUC_BUNDLE_COMPATIBLE": "vmclient-genericx86-64",
               "RAUC_KEY_FILE": "/keys/update.key", "RAUC_CERT_FILE": "/keys/update.crt"},
    "flags": {"RAUC_SLOT_rootfs": {"fstype": "ext4.verity", "imagetype": "raw", "hooks": "post-install"},
              "RAUC_BUNDLE_HOOKS": {"file": "vmclient-bundle-hook"}},
}


def _bundle_failures(m, values=None, flags=None, classes=("bundle",), recipes=None):
    m.failures.clear()
    bundle = _Resolved({**BUNDLE_RESOLVED["values"], **(values or {})},
                       {**BUNDLE_RESOLVED["flags"], **(flags or {})}, classes)
    cfg = _Resolved({"VMCLIENT_RAUC_COMPATIBLE": "vmclient-genericx86-64"})
    m.check_bundle(_Tinfoil({"vmclient-bundle": bundle} if recipes is None else recipes), cfg)
    return list(m.failures)


def test_resolve_bundle_rule_wants_a_signed_verity_bundle_of_the_verified_root():
    m = _resolve_module()
    assert _bundle_failures(m) == []
    assert any("verity format" in f for f in _bundle_failures(m, {"RAUC_BUNDLE_FORMAT": "plain"}))
    assert any("verity format" in f for f in _bundle_failures(m, classes=()))
    plain_root = {"RAUC_SLOT_rootfs": {"fstype": "ext4", "imagetype": "raw", "hooks": "post-install"}}
    assert any("hash tree" in f for f in _bundle_failures(m, flags=plain_root))
    assert any("UKI" in f for f in _bundle_failures(m, {"RAUC_BUNDLE_EXTRA_FILES": "vmclient-a.efi"}))
    assert any("signed with" in f for f in _bundle_failures(m, {"RAUC_KEY_FILE": "/other.key"}))
    # the pinned layers alone: no vmclient-bundle
    assert any("recipe parses" in f for f in _bundle_failures(m, recipes={}))


def _verity_failures(m, image_values=None, image_flags=None, classes=("image_types_verity", "uki",
                                                                       "vmclient-ab-uki")):
    m.failures.clear()
    values = {"IMAGE_FSTYPES": "ext4 verity wic.zst wic.bmap", "__BBTASKS": ["do_uki", "do_image_verity"],
              "VERITY_IMAGE_FSTYPE": "ext4", "VERITY_SALT": "8c" * 32, "CLASS_VERITY_SALT": "4e" * 32,
              "IMAGE_TYPEDEP:wic": "verity", "INITRAMFS_IMAGE": "vmclient-initramfs", **(image_values or {})}
    flags = {"do_uki": {"deps": ["do_rootfs", "do_image_verity"], "prefuncs": "vmclient_uki_first_slot",
                        "postfuncs": "vmclient_uki_other_slots"},
             "do_image_wic": {"deps": ["do_image", "do_image_verity"]}, **(image_flags or {})}
    initramfs = _Resolved({"PACKAGE_INSTALL": "initramfs-framework-base initramfs-module-vmclient-verity"})
    module = _Resolved({"RDEPENDS:initramfs-module-vmclient-verity": "cryptsetup initramfs-framework-base"})
    m.check_verity(_Tinfoil({"vmclient-initramfs": initramfs},
                            {"initramfs-module-vmclient-verity": module}),
                   _Resolved(values, flags, classes))
    return list(m.failures)


def test_resolve_verity_rule_wants_the_hash_tree_before_the_ukis_and_the_disk():
    m = _resolve_module()
    assert _verity_failures(m) == []
    # the image before the update: no verity class, the UKI right after do_rootfs
    old = _verity_failures(m, {"IMAGE_FSTYPES": "wic.zst wic.bmap", "__BBTASKS": ["do_uki"],
                               "INITRAMFS_IMAGE": "core-image-minimal-initramfs"},
                           {"do_uki": {"deps": ["do_rootfs"]}, "do_image_wic": {"deps": ["do_image"]}},
                           classes=("uki",))
    assert len(old) >= 4, old
    assert any("own salt" in f for f in _verity_failures(m, {"VERITY_SALT": "4e" * 32}))
    assert any("after the hash tree" in f for f in _verity_failures(
        m, image_flags={"do_image_wic": {"deps": ["do_image"]}}))


def test_rauc_writes_the_inactive_slot_with_under_a_tenth_of_a_core_and_idle_io():
    """Installing while the VMs run must not be noticed (<= 10 % of one core on average):
    rauc.service's drop-in caps its CPU below that (CFS bandwidth control lets a group
    overrun its quota a little: bench/host_update.py measured 10.1 % used under
    CPUQuota=10%) and gives it the disk only when idle, and the
    recipe installs it as rauc.service's drop-in.  It requires the data partition but
    only wants the ESP (systemd-gpt-auto-generator's efi.automount unmounts an idle ESP,
    which stopped rauc.service mid-install on the test host)."""
    dropin = UPDATE.parent / "files" / "10-vmclient.conf"
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in dropin.read_text().splitlines():
        ln = raw.strip()
        if ln.startswith("["):
            section = ln
        elif ln and not ln.startswith("#"):
            key, _, value = ln.partition("=")
            directives.setdefault(f"{section}{key}", []).append(value)
    [quota] = directives["[Service]CPUQuota"]
    assert quota.endswith("%") and 0 < float(quota[:-1]) <= 9, quota
    assert directives["[Service]IOSchedulingClass"] == ["idle"]
    assert directives["[Unit]RequiresMountsFor"] == ["@DATADIR@"]
    # the ESP wanted, never required: an idle ESP's automount expiry must not stop RAUC
    assert "/efi" not in directives["[Unit]RequiresMountsFor"][0]
    assert directives["[Unit]Wants"] == ["efi.mount"] and directives["[Unit]After"] == ["efi.mount"]
    assert re.search(r"10-vmclient\.conf\s*\\?\s*>\s*\$\{D\}\$\{systemd_system_unitdir\}/rauc\.service\.d/"
                     r"10-vmclient\.conf", UPDATE.read_text()), "the recipe does not install the drop-in"


def test_the_esp_gets_a_loader_conf_without_the_command_line_editor():
    """A slot's command line edited at the boot menu would boot it with another root or
    none: the ESP's loader.conf says ``editor no`` (vmclient-ab-uki.bbclass writes it and
    puts it over the one wic's bootimg_efi writes)."""
    conf = bbvars.value(CLASS, "VMCLIENT_LOADER_CONF")
    lines = [ln.strip() for ln in conf.split(";")]
    assert "editor no" in lines, lines
    assert any(re.fullmatch(r"timeout \d+", ln) for ln in lines), lines
    text = CLASS.read_text()
    assert "'vmclient-loader.conf'" in text and "d.getVar('VMCLIENT_LOADER_CONF').split(';')" in text
    files = bbvars.value(CLASS, "IMAGE_EFI_BOOT_FILES").split()
    assert "vmclient-loader.conf;loader/loader.conf" in files, files
    assert "VMCLIENT_LOADER_CONF" in text.split("do_uki[vardeps]")[1].splitlines()[0]
