"""The layer's verified root on a real kernel: meta-vmclient's initramfs module
(recipes-core/initrdscripts/files/vmclient-verity) opens the test host's root
through dm-verity with the command line vmclient-ab-uki.bbclass writes into a
slot's UKI, and a modified root does not boot.

The test host's own kernel and Debian initramfs (initramfs-tools) stand for the
laptop's; nothing of the layer is rebuilt.  Appended to the host's initrd (Linux
unpacks concatenated cpio archives) goes a small cpio with:

- the module, unchanged, under the name its recipe installs it as (/init.d/...);
- a local-top script standing for initramfs-framework's init (SHIM): the kernel
  command line as init's bootparam_* variables, init's msg and fatal (fatal
  reboots, as with init_fatal_reboot), the /init.d modules run the way init runs
  them (NAME_enabled, NAME_run of NN-NAME), then ROOT=$bootparam_root in
  /conf/param.conf, which is how initramfs-tools lets a local-top script change
  the root it mounts;
- veritysetup with its libraries and the dm-verity modules of the image's kernel
  (built in on the laptop: CONFIG_DM_VERITY=y), all from the image's root, read
  with debugfs (no mount).

The root is the image's ext4, shrunk to its used blocks, with its hash tree
after the data as image_types_verity lays it out (veritysetup format
--no-superblock, data-blocks, hash-offset, salt); its parameters go through
the bbclass's own vmclient_verity_params and vmclient_slot_cmdline (the slot's
partition becomes /dev/vda: the test disk has no partition table).  QEMU boots
kernel + initrd directly under TCG with -no-reboot, twice:

(a) the untouched root: the module opens it, the kernel mounts ext4 from the
    verity device and systemd starts and reaches targets (QEMU is then killed);
(b) the same root with /usr/lib/os-release changed in place (its data block,
    found with debugfs bmap): systemd reads it first thing.  Without a
    corruption policy the read only fails (EIO), systemd carries on without it
    and the boot goes on; with the UKI's restart-on-corruption the kernel
    restarts on that read, so QEMU ends by itself before systemd reaches any
    target, and the console names dm-verity's corruption.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import pytest

from testlib import need

pytestmark = pytest.mark.system

HERE = Path(__file__).resolve().parent
LAYER = HERE.parents[1] / "meta-vmclient"
MODULE = LAYER / "recipes-core" / "initrdscripts" / "files" / "vmclient-verity"
MODULE_RECIPE = LAYER / "recipes-core" / "initrdscripts" / "initramfs-module-vmclient-verity_1.0.bb"
CLASS = LAYER / "classes-recipe" / "vmclient-ab-uki.bbclass"
SLOT = "a"
# the image's own salt in the layer (VERITY_SALT); any 64 hex digits do
SALT = "6c1b2d0f57a3e9c4b8a0d2f4e6c8a1b3d5f7092b4d6f8a0c2e4b6d8f0a1c3e5f"
LIBDIR = "/usr/lib/x86_64-linux-gnu"
TAMPERED = "/usr/lib/os-release"
BOOT_TIMEOUT = 300
# where a boot that went wrong stops without ending QEMU (initramfs-tools' panic
# drops to a shell; a kernel panic without panic= halts)
DEAD_ENDS = ("Dropping to a shell", "Kernel panic", "(initramfs)")

# initramfs-tools local-top script: the layer's initramfs-framework module(s) in
# /init.d under a stand-in for initramfs-framework's init.  The Debian initramfs
# has klibc's tools only (no sed, cut, tr, grep): plain sh.
SHIM = r"""#!/bin/sh
case "$1" in prereqs) exit 0 ;; esac

# initramfs-framework's init: msg, and fatal as with init_fatal_reboot
msg() {
    echo "$@" >/dev/console
}
fatal() {
    echo "$1" >/dev/console
    echo >/dev/console
    if [ -n "$bootparam_init_fatal_reboot" ]; then
        reboot  # klibc's: reboot(2) at once, as busybox's reboot -f
    fi
    while true; do sleep 3600; done
}
underscored() {  # init's `sed -e 'y/.-/__/'`
    rest=$1 out=
    while [ -n "$rest" ]; do
        c=${rest%"${rest#?}"}
        rest=${rest#?}
        case "$c" in .|-) c=_ ;; esac
        out=$out$c
    done
    echo "$out"
}

# dm-verity: built into the laptop's kernel, modules of this one
for ko in $(cat /vmclient-test/modules); do
    name=${ko##*/}
    name=$(underscored "${name%.ko}")
    [ -d "/sys/module/$name" ] || insmod "$ko" || fatal "cannot load $ko"
done

# init's bootparam_* environment (foo=value, foo)
for p in $(cat /proc/cmdline); do
    opt=$(underscored "${p%%=*}")
    if [ "${p%%=*}" = "$p" ]; then
        eval "bootparam_${opt}=true"
    else
        eval "bootparam_${opt}=\"\${p#*=}\""
    fi
done

# init's loop: /init.d/NN-NAME runs as NAME_enabled, NAME_run
for m in /init.d/*; do
    module=${m##*/}
    module=${module#*-}
    module=${module%%-*}
    . "$m"
    eval "${module}_enabled" || continue
    eval "${module}_run"
done

msg "vmclient-test: root $bootparam_root: $(dmsetup table root 2>&1)"
echo "ROOT=$bootparam_root" >>/conf/param.conf
"""

ORDER = """/scripts/local-top/vmclient-verity "$@"
[ -e /conf/param.conf ] && . /conf/param.conf
"""


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, **kw)


def debugfs(image: Path, command: str) -> str:
    return run("debugfs", "-R", command, image, text=True).stdout


def image_file(image: Path, path: str, dest: Path) -> str:
    """Copy path (symlinks followed) out of the ext4 image to dest; its real path."""
    for _ in range(8):
        stat = debugfs(image, f"stat {path}")
        link = re.search(r'Fast link dest: "(.*)"', stat)
        if link:
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), link.group(1)))
            continue
        if "Type: regular" not in stat:
            raise AssertionError(f"{path} is not a file in {image.name}: {stat[:200]}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        run("debugfs", "-R", f"dump {path} {dest}", image)
        dest.chmod(int(re.search(r"Mode:\s+(\d+)", stat).group(1), 8))
        return path
    raise AssertionError(f"{path}: too many symlinks")


def needed(binary: Path) -> list[str]:
    out = run("objdump", "-p", binary, text=True).stdout
    return re.findall(r"^\s+NEEDED\s+(\S+)$", out, re.M)


def class_functions() -> dict:
    """vmclient-ab-uki.bbclass's plain python functions (the layer's own code)."""
    namespace: dict = {}
    for name in ("vmclient_verity_params", "vmclient_slot_cmdline"):
        m = re.search(rf"^def {name}\(.*?(?=^\S)", CLASS.read_text(), re.M | re.S)
        assert m, name
        exec(m.group(0), namespace)
    return namespace


def verity_format(root: Path) -> str:
    """The hash tree after the data, as image_types_verity writes it; its
    .verity-params text."""
    block = 4096
    data_blocks = -(-root.stat().st_size // block)
    out = run("veritysetup", "format", "--no-superblock", f"--salt={SALT}",
              f"--data-blocks={data_blocks}", f"--data-block-size={block}",
              f"--hash-block-size={block}", f"--hash-offset={data_blocks * block}",
              root, root, text=True).stdout
    params = []
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            params.append("VERITY_%s=%s" % (k.strip().upper().replace(" ", "_"),
                                             v.strip().removesuffix(" [bytes]")))
    params.append(f"VERITY_DATA_SECTORS={data_blocks * block // 512}")
    return "\n".join(params)


def initrd_addition(root: Path, kernel_version: str, stage: Path) -> None:
    """The module, the shim, veritysetup and the dm-verity modules, in stage."""
    installed = re.search(r"\$\{D\}(/init\.d/\S+)$", MODULE_RECIPE.read_text(), re.M).group(1)
    (stage / installed.lstrip("/")).parent.mkdir(parents=True)
    shutil.copy(MODULE, stage / installed.lstrip("/"))
    local_top = stage / "scripts" / "local-top"
    local_top.mkdir(parents=True)
    (local_top / "vmclient-verity").write_text(SHIM)
    (local_top / "vmclient-verity").chmod(0o755)
    (local_top / "ORDER").write_text(ORDER)
    # veritysetup and every library it needs, from the image
    todo = ["/usr/sbin/veritysetup"]
    done: set[str] = set()
    while todo:
        path = todo.pop()
        if path in done:
            continue
        done.add(path)
        real = image_file(root, path, stage / path.lstrip("/"))
        if real != path:  # the soname's link target: both names in the initrd
            shutil.copy(stage / path.lstrip("/"), stage / real.lstrip("/"))
        todo += [f"{LIBDIR}/{lib}" for lib in needed(stage / path.lstrip("/"))]
    # dm-verity and what it needs, in the order to load them (modules.dep)
    moddir = f"/usr/lib/modules/{kernel_version}"
    dep = dict(line.split(":", 1) for line in debugfs(root, f"cat {moddir}/modules.dep").splitlines()
               if ":" in line)
    key = next(k for k in dep if k.endswith("/dm-verity.ko"))
    order = [*reversed(dep[key].split()), key]
    for ko in order:
        image_file(root, f"{moddir}/{ko}", stage / moddir.lstrip("/") / ko)
    (stage / "vmclient-test").mkdir()
    (stage / "vmclient-test" / "modules").write_text("".join(f"{moddir}/{ko}\n" for ko in order))


def cpio(tree: Path, out: Path) -> None:
    names = run("find", ".", "-mindepth", "1", "-print0", cwd=tree).stdout
    with out.open("wb") as f:
        subprocess.run(["cpio", "-o", "-0", "-H", "newc", "-R", "0:0", "--quiet"],
                       input=b"\0".join(sorted(names.split(b"\0"))).lstrip(b"\0"),
                       stdout=f, cwd=tree, check=True)


@dataclasses.dataclass
class VerityRoot:
    cfg: harness.BootConfig  # the verified root, the combined initrd, the slot's command line
    root: Path
    params: dict[str, str]
    prepared_s: float


@pytest.fixture(scope="module")
def verity_root(host_boot_config: harness.BootConfig) -> Iterator[VerityRoot]:
    cfg = host_boot_config
    if cfg.kind != "debian-test-host" or cfg.kernel is None or cfg.initrd is None:
        pytest.skip("VMCLIENT_SYSTEM_IMAGE names another image: this test boots the Debian "
                    "test host's kernel and initramfs")
    for tool in ("veritysetup", "debugfs", "resize2fs", "objdump", "cpio"):
        need(shutil.which(tool) is not None, f"{tool} is not installed (tests/system/apt-packages.txt)")
    from image import ab
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="vmclient-verity.", dir="/var/tmp"))
    try:
        root = work / "root.ext4.verity"
        run("qemu-img", "convert", "-O", "raw", cfg.disk, root)
        ab.shrink(root)  # e2fsck, to the used blocks: less to hash
        params = class_functions()["vmclient_verity_params"](verity_format(root))
        meta = json.loads((cfg.disk.parent / "image.json").read_text())
        stage = work / "stage"
        stage.mkdir()
        initrd_addition(root, meta["kernel_version"], stage)
        initrd = work / "initrd.cpio"
        ab.slim_initrd(cfg.initrd, initrd, work)  # uncompressed: nothing to unpack under TCG
        cpio(stage, work / "addition.cpio")
        with initrd.open("ab") as f, (work / "addition.cpio").open("rb") as g:
            shutil.copyfileobj(g, f)
        base = " ".join(w for w in cfg.append.split() if not w.startswith("root="))
        # the UKI's shared part (vmclient-image.bb's UKI_CMDLINE) and the slot's own
        cmdline = class_functions()["vmclient_slot_cmdline"](
            SLOT, params, f"rootwait rootfstype=ext4 ro init_fatal_reboot {base}")
        cmdline = cmdline.replace(f"PARTLABEL=vmroot_{SLOT}", "/dev/vda")
        boot = dataclasses.replace(cfg, disk=root, disk_format="raw", initrd=initrd, append=cmdline,
                                   tpm=False, data_disk_size=None)
        yield VerityRoot(boot, root, params, time.monotonic() - t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def boot(cfg: harness.BootConfig, until, timeout: float = BOOT_TIMEOUT) -> tuple[harness.Machine, float]:
    """Start QEMU (-no-reboot) and wait until until(console) is true or QEMU has
    ended (fails at a DEAD_ENDS line); the machine (still to be closed) and the
    seconds it took."""
    m = harness.Machine(cfg, name="vmclient-test-verity", cold_restarts=True)
    try:
        m.start()
        deadline = time.monotonic() + timeout
        while m.running and not until(text := console(m)):
            if any(d in text for d in DEAD_ENDS):
                raise AssertionError(f"the boot went wrong:\n{m.console_tail(60)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"neither the awaited line nor an end within {timeout} s:\n"
                                     f"{m.console_tail(60)}")
            time.sleep(0.5)
        took = time.monotonic() - m.t_start
        if not m.running:
            time.sleep(0.5)  # the event thread reads the last events QEMU sent
        return m, took
    except BaseException:
        m.close()
        raise


def console(m: harness.Machine) -> str:
    return m.console_log.read_text(errors="replace") if m.console_log.exists() else ""


def reached_target(text: str) -> bool:
    return bool(re.search(r"Reached target", text))


def test_verified_root_boots_and_a_modified_one_restarts(verity_root: VerityRoot) -> None:
    v = verity_root
    assert "restart-on-corruption" in v.cfg.append.split("systemd.verity_root_options=")[1].split()[0]
    print(f"\nverity: root {v.root.stat().st_size >> 20} MiB with its hash tree, "
          f"initrd {v.cfg.initrd.stat().st_size >> 20} MiB, prepared in {v.prepared_s:.1f} s")

    # (a) the untouched root: opened through dm-verity, mounted, systemd runs
    m, took = boot(v.cfg, reached_target)
    try:
        text = console(m)
        assert m.running, f"QEMU ended on the untouched root:\n{m.console_tail(60)}"
    finally:
        m.close()
    print(f"verity: (a) untouched root to systemd's first target: {took:.1f} s")
    assert "dm-verity: opening /dev/vda as /dev/mapper/root" in text, text[-4000:]
    table = re.search(r"vmclient-test: root (\S+): (.*)", text)
    assert table and table.group(1) == "/dev/mapper/root", text[-4000:]
    # dmsetup names the devices major:minor: data and hash tree on the same one
    dm = re.search(r" verity 1 (\d+:\d+) (\d+:\d+) 4096 4096 (\d+) \d+ sha256 (\S+) (\S+)\b", table.group(2))
    assert dm and dm.group(1) == dm.group(2), table.group(2)
    assert dm.groups()[2:] == (v.params["VERITY_DATA_BLOCKS"], v.params["VERITY_ROOT_HASH"], SALT)
    assert re.search(r"\brestart_on_corruption\b", table.group(2)), table.group(2)
    dm_minor = re.search(r"EXT4-fs \((dm-\d+)\): mounted filesystem", text)
    assert dm_minor, f"the root was not mounted from the verity device:\n{text[-4000:]}"
    assert re.search(r"systemd\[1\]: systemd \d+.* running in system mode", text), text[-4000:]
    assert "corrupted" not in text

    # (b) a file systemd reads first thing, changed in place in its data block
    block = int(debugfs(v.root, f"bmap {TAMPERED} 0").strip())
    with v.root.open("r+b") as f:
        f.seek(block * 4096)
        data = f.read(4096)
        assert b"Debian" in data, data[:200]
        f.seek(block * 4096)
        f.write(data.replace(b"Debian", b"Forged", 1))
    m, took = boot(v.cfg, reached_target)
    try:
        text = console(m)
        assert not m.running, f"systemd reached a target on a modified root:\n{text[-4000:]}"
        why = [e.data.get("reason") for e in m.events.events if e.name == "SHUTDOWN"] if m.events else []
    finally:
        m.close()
    print(f"verity: (b) modified root until QEMU ended: {took:.1f} s")
    assert why[-1:] == ["guest-reset"], f"QEMU ended without a restart ({why}):\n{text[-4000:]}"
    assert "dm-verity: opening /dev/vda as /dev/mapper/root" in text
    assert re.search(rf"device-mapper: verity: .*: data block {block} is corrupted", text), text[-4000:]
    assert "Restarting system with command 'dm-verity device corrupted'" in text, text[-4000:]
    assert not reached_target(text), f"systemd reached a target on a modified root:\n{text[-4000:]}"
