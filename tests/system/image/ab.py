"""The test host's A/B update layout (issue 18), from meta-vmclient's own files.

Two parts, both used by ./build:

``install(root, keyring)`` puts the layer's RAUC pieces into every test host's root
(harmless where the host boots its kernel directly: rauc is only started on demand,
the ESP is only mounted when the A/B boot asks for it with ``systemd.wants=efi.mount``):

- ``/etc/rauc/system.conf``: recipes-core/rauc/files/system.conf with its placeholders
  filled as rauc-conf.bbappend fills them, less ``min-bundle-version`` (Debian 12's
  RAUC 1.8 refuses the key; the image's RAUC has it; the services refuse downgrades
  themselves, hostpolicy.py), and the test update CA as the keyring;
- ``/usr/lib/vmclient/rauc-boot-backend``: recipes-core/vmclient-update's backend, with
  one line changed: the entry names the slot's UKI with ``efi`` instead of ``uki``
  (systemd-boot 252, Debian 12's, predates the ``uki`` key; both start the same
  signed EFI binary), and ``VMCLIENT_BOOT_TRIES`` = 1 (``BOOT_TRIES``): one failed
  attempt falls back, which saves the test two boots of the bad slot;
- efi.mount and rauc.service's drop-in (the image's ``10-vmclient.conf``);
- ``vmclient-boot-check.service`` enabled (required by boot-complete.target, which
  only a boot on trial starts).

``build(cache, host_dir, pki)`` makes the A/B image from a built host: a GPT disk
(``ESP``, ``vmroot_a`` with the host's root as release 1.0, ``vmroot_b`` empty), the
ESP with systemd-boot, ``loader.conf`` (``timeout 0``, ``editor no``) and slot A's
entry and UKI, and a disk of two signed verity bundles built with ``rauc bundle``:
release 2.0 (the same root, another ``VERSION_ID``) and 2.1, whose vmclient-provd
cannot start (the boot gate fails).  Each bundle carries both slots' UKIs and the
layer's vmclient-bundle-hook, as vmclient-bundle.bb does.  The roots are the host's
ext4 without the kernel modules of hardware a QEMU machine lacks (``PRUNED_MODULES``),
shrunk to its used blocks and edited with ``debugfs`` (no loop device, no mount): RAUC
writes every byte of the image into the slot, and the bundles carry it twice.  The
disk and the bundles' disk are raw sparse files (no qcow2 copy to make).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYER = HERE.parents[2] / "meta-vmclient"
RAUC_FILES = LAYER / "recipes-core" / "rauc" / "files"
UPDATE_FILES = LAYER / "recipes-core" / "vmclient-update" / "files"
BUNDLE_FILES = LAYER / "recipes-core" / "bundles" / "files"
SOURCES = (RAUC_FILES / "system.conf", UPDATE_FILES / "rauc-boot-backend",
           UPDATE_FILES / "efi.mount", UPDATE_FILES / "10-vmclient.conf",
           BUNDLE_FILES / "vmclient-bundle-hook")

COMPATIBLE = "vmclient-debian-test-host"
DATA_DIR = "/var/lib/vmclient"
BACKEND = "/usr/lib/vmclient/rauc-boot-backend"
KEYRING = "/etc/rauc/keyring.pem"
BOOT_TRIES = 1
SLOTS = ("a", "b")
RELEASES = {"factory": "1.0", "update": "2.0", "broken": "2.1"}
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ESP_MIB = 256
# GPT partition types (the wks's): ESP and root-x86-64
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
# the slots' command line: the test host's, with the root by partition name
CMDLINE = ("root=/dev/disk/by-partlabel/vmroot_{slot} ro rauc.slot={slot} "
           "systemd.wants=efi.mount console=ttyS0 net.ifnames=0 mitigations=off "
           "log_buf_len=8M")
# 2.1's vmclient-provd: a drop-in that makes it exit at once
BROKEN_DROPIN = "/etc/systemd/system/vmclient-provd.service.d/90-broken-update.conf"


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def backend_text() -> str:
    text = (UPDATE_FILES / "rauc-boot-backend").read_text()
    old = "uki /EFI/vmclient/vmclient-%s.efi"
    if text.count(old) != 1:
        raise SystemExit(f"ab.py: the boot backend no longer writes {old!r}: update ab.py")
    return (text.replace(old, "efi /EFI/vmclient/vmclient-%s.efi")
            .replace("@TRIES@", str(BOOT_TRIES)).replace("@SLOTS@", " ".join(SLOTS)))


def system_conf() -> str:
    lines = [ln for ln in (RAUC_FILES / "system.conf").read_text().splitlines()
             if not ln.startswith("min-bundle-version=")]
    text = "\n".join(lines) + "\n"
    for k, v in (("@COMPATIBLE@", COMPATIBLE), ("@DATADIR@", DATA_DIR),
                 ("@KEYRING@", KEYRING), ("@BACKEND@", BACKEND), ("@TRIES@", str(BOOT_TRIES))):
        text = text.replace(k, v)
    if any("@" in ln for ln in text.splitlines() if not ln.startswith("#")):
        raise SystemExit("ab.py: system.conf has a placeholder ab.py does not fill")
    return text


def install(root: Path, keyring: Path) -> list[str]:
    """The RAUC pieces into a test host's root; the units to enable."""
    (root / "etc/rauc").mkdir(parents=True, exist_ok=True)
    (root / "etc/rauc/system.conf").write_text(system_conf())
    shutil.copy(keyring, root / KEYRING.lstrip("/"))
    backend = root / BACKEND.lstrip("/")
    backend.parent.mkdir(parents=True, exist_ok=True)
    backend.write_text(backend_text())
    backend.chmod(0o755)
    units = root / "usr/lib/systemd/system"
    shutil.copy(UPDATE_FILES / "efi.mount", units / "efi.mount")
    dropin = root / "etc/systemd/system/rauc.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    (dropin / "10-vmclient.conf").write_text(
        (UPDATE_FILES / "10-vmclient.conf").read_text().replace("@DATADIR@", DATA_DIR))
    (root / "efi").mkdir(exist_ok=True)
    return ["vmclient-boot-check.service"]


def make_pki(d: Path) -> tuple[Path, Path, Path]:
    """The test update CA and a signing certificate under it (ca, cert, key); kept."""
    ca, cert, key = d / "ca.pem", d / "signer.pem", d / "signer.key"
    if ca.exists() and cert.exists() and key.exists():
        return ca, cert, key
    d.mkdir(parents=True, exist_ok=True, mode=0o700)

    def ossl(*a: str | Path) -> None:
        run("openssl", *a, capture_output=True)
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", d / "ca.key", "-out", d / "ca.tmp", "-days", "3650",
         "-subj", "/CN=vmclient test update CA")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", d / "signer.csr", "-subj", "/CN=vmclient test bundle signer")
    ossl("x509", "-req", "-in", d / "signer.csr", "-CA", d / "ca.tmp", "-CAkey", d / "ca.key",
         "-CAcreateserial", "-out", cert, "-days", "3650")
    (d / "ca.tmp").rename(ca)
    return ca, cert, key


def key(host: Path, pki_ca: Path) -> str:
    h = hashlib.sha256(b"ab-v1\0" + host.name.encode() + b"\0")
    for p in (Path(__file__), *SOURCES, pki_ca, STUB, SYSTEMD_BOOT):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def debugfs(image: Path, *commands: str) -> None:
    r = run("debugfs", "-w", "-f", "-", image, input="\n".join(commands) + "\n",
            capture_output=True, text=True)
    # debugfs exits 0 whatever happens: its complaints are on stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise SystemExit(f"ab.py: debugfs on {image.name}: {errors}")


# Kernel modules for hardware a QEMU machine does not have (under
# /usr/lib/modules/VERSION/kernel): a third of the host's root.  The slots carry
# the rest (KVM, virtio, dm, block, net, the file systems the host mounts).
PRUNED_MODULES = (
    "sound", "drivers/gpu", "drivers/media", "drivers/net/ethernet", "drivers/net/wireless",
    "drivers/net/usb", "drivers/net/can", "drivers/net/phy", "drivers/infiniband",
    "drivers/usb", "drivers/iio", "drivers/staging", "drivers/hwmon", "drivers/platform",
    "drivers/comedi", "drivers/mtd", "drivers/target", "drivers/mmc", "drivers/isdn",
    "drivers/bluetooth", "drivers/video", "net/bluetooth", "net/wireless", "net/mac80211",
    "fs/xfs", "fs/nfs", "fs/nfsd", "fs/btrfs", "fs/ocfs2", "fs/smb", "fs/f2fs", "fs/gfs2",
    "fs/ceph")


def debugfs_ls(image: Path, dirs: list[str]) -> dict[str, list[tuple[str, bool]]]:
    """{dir: [(name, is_dir)]} of each directory that exists (one debugfs run)."""
    r = run("debugfs", "-c", "-f", "-", image, input="".join(f"ls -p {d}\n" for d in dirs),
            capture_output=True, text=True)
    out: dict[str, list[tuple[str, bool]]] = {}
    cur: list[tuple[str, bool]] | None = None
    for ln in r.stdout.splitlines():
        if ln.startswith("debugfs: ls -p "):
            cur = out.setdefault(ln.removeprefix("debugfs: ls -p "), [])
        elif cur is not None and ln.startswith("/"):
            _, _ino, mode, _uid, _gid, name, *_ = ln.split("/")
            if name not in (".", ".."):
                cur.append((name, mode.startswith("04")))
    return out


def prune_modules(image: Path) -> None:
    """PRUNED_MODULES out of the root image, with debugfs (no mount)."""
    versions = [n for n, d in debugfs_ls(image, ["/usr/lib/modules"]).get("/usr/lib/modules", ())
                if d]
    if not versions:
        raise SystemExit(f"ab.py: no /usr/lib/modules in {image.name}")
    level = [f"/usr/lib/modules/{v}/kernel/{p}" for v in versions for p in PRUNED_MODULES]
    files: list[str] = []
    dirs: list[str] = []
    while level:
        listing = debugfs_ls(image, level)
        dirs += listing
        files += [f"{d}/{n}" for d, ents in listing.items() for n, isdir in ents if not isdir]
        level = [f"{d}/{n}" for d, ents in listing.items() for n, isdir in ents if isdir]
    debugfs(image, *(f"rm {f}" for f in files), *(f"rmdir {d}" for d in reversed(dirs)))


def shrink(image: Path) -> None:
    """The file system to its used blocks and a little room (resize2fs -M leaves a third
    of it free: every free block is a block RAUC writes into a slot)."""
    run("e2fsck", "-fy", image, capture_output=True)
    head = run("dumpe2fs", "-h", image, capture_output=True, text=True).stdout
    val = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in head.splitlines())}
    used = int(val["Block count"]) - int(val["Free blocks"])
    if subprocess.run(["resize2fs", "-f", str(image), str(used + used // 20 + 4096)],
                      capture_output=True).returncode != 0:
        run("resize2fs", "-M", image, capture_output=True)
    run("e2fsck", "-fn", image, capture_output=True)


# Kernel modules the slots' initramfs does not need to find and mount a root on a
# virtio disk (under /usr/lib/modules/VERSION/kernel): nine tenths of Debian's
# MODULES=most initramfs, which the kernel would unpack at every boot (~15 s of a
# TCG-emulated core for its 130 MB) and systemd-boot load from the ESP.
INITRD_PRUNED = (
    "sound", "drivers/net", "drivers/scsi", "drivers/usb", "drivers/infiniband",
    "drivers/hid", "drivers/ata", "drivers/nvme", "drivers/mmc", "drivers/thunderbolt",
    "drivers/ufs", "drivers/video", "drivers/gpu", "drivers/media", "fs/btrfs", "fs/xfs",
    "fs/f2fs", "fs/nfs", "fs/nfs_common", "fs/lockd", "fs/sunrpc", "fs/jfs", "fs/reiserfs",
    "fs/udf", "fs/isofs", "fs/ocfs2", "fs/gfs2", "fs/ceph", "fs/smb", "fs/nilfs2",
    "fs/hfs", "fs/hfsplus", "fs/ntfs3", "fs/ubifs", "fs/squashfs", "net/sunrpc")


def slim_initrd(src: Path, out: Path, work: Path) -> None:
    """src (a gzip'd cpio) without INITRD_PRUNED, as an uncompressed cpio (nothing to
    decompress under TCG).  modules.dep still names the pruned modules (no depmod here):
    udev's coldplug may ask for one of a device the machine has and does not need (the
    IDE controller's), which fails alone."""
    tree = work / "initrd"
    tree.mkdir()
    with src.open("rb") as f:
        gz = subprocess.Popen(["gzip", "-dc"], stdin=f, stdout=subprocess.PIPE)
        run("cpio", "-id", "--quiet", stdin=gz.stdout, cwd=tree)
        if gz.wait() != 0:
            raise SystemExit(f"ab.py: {src} is not a gzip'd cpio")
    versions = [d.name for d in (tree / "usr/lib/modules").iterdir() if d.is_dir()]
    if not versions:
        raise SystemExit(f"ab.py: no kernel modules in {src}")
    for v in versions:
        for rel in INITRD_PRUNED:
            shutil.rmtree(tree / "usr/lib/modules" / v / "kernel" / rel, ignore_errors=True)
    names = run("find", ".", "-print0", cwd=tree, capture_output=True).stdout
    with out.open("wb") as f:
        run("cpio", "-o", "-0", "-H", "newc", "-R", "0:0", "--quiet",
            input=b"\0".join(sorted(names.split(b"\0"))).lstrip(b"\0"), stdout=f, cwd=tree)
    shutil.rmtree(tree)


def set_release(image: Path, release: str, work: Path) -> None:
    """/usr/lib/os-release (what /etc/os-release links to) with VERSION_ID=release."""
    r = run("debugfs", "-R", "cat /usr/lib/os-release", image, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if not ln.startswith(("VERSION_ID=", "VERSION="))]
    if not any(ln.startswith("ID=") for ln in lines):
        raise SystemExit(f"ab.py: no os-release in {image.name}")
    new = work / f"os-release-{release}"
    new.write_text("\n".join([*lines, f'VERSION_ID="{release}"',
                               f'VERSION="{release} (vmclient test host)"']) + "\n")
    new.chmod(0o644)
    debugfs(image, "rm /usr/lib/os-release", f"write {new} /usr/lib/os-release",
            "sif /usr/lib/os-release uid 0", "sif /usr/lib/os-release gid 0")


def break_provd(image: Path, work: Path) -> None:
    conf = work / "broken.conf"
    conf.write_text("# release 2.1 of the system test: vmclient-provd does not come up\n"
                    "[Service]\nExecStart=\nExecStart=/bin/false\n")
    conf.chmod(0o644)
    d = str(Path(BROKEN_DROPIN).parent)
    debugfs(image, f"mkdir {d}", f"write {conf} {BROKEN_DROPIN}",
            f"sif {d} uid 0", f"sif {BROKEN_DROPIN} uid 0", f"sif {BROKEN_DROPIN} gid 0")


def make_uki(out: Path, kernel: Path, initrd: Path, cmdline: str, work: Path) -> None:
    """systemd-stub + kernel + initrd + command line (objcopy: Debian 12 has no ukify)."""
    c = work / f"{out.name}.cmdline"
    c.write_text(cmdline + "\n")
    run("objcopy", "--add-section", f".cmdline={c}", "--change-section-vma", ".cmdline=0x30000",
        "--add-section", f".linux={kernel}", "--change-section-vma", ".linux=0x2000000",
        "--add-section", f".initrd={initrd}", "--change-section-vma", ".initrd=0x3000000",
        STUB, out)


def mcopy(esp: Path, src: Path, dst: str) -> None:
    run("mcopy", "-i", esp, "-s", "-o", src, f"::{dst}",
        env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def make_bundle(out: Path, release: str, rootfs: Path, ukis: dict[str, Path],
                pki: tuple[Path, Path, Path], work: Path) -> None:
    ca, cert, key_ = pki
    content = work / f"bundle-{release}"
    content.mkdir()
    (content / "rootfs.ext4").hardlink_to(rootfs)
    for slot, uki in ukis.items():
        (content / f"vmclient-{slot}.efi").hardlink_to(uki)
    shutil.copy(BUNDLE_FILES / "vmclient-bundle-hook", content / "vmclient-bundle-hook")
    (content / "vmclient-bundle-hook").chmod(0o755)
    (content / "manifest.raucm").write_text(
        f"[update]\ncompatible={COMPATIBLE}\nversion={release}\n\n[bundle]\nformat=verity\n\n"
        "[hooks]\nfilename=vmclient-bundle-hook\n\n"
        "[image.rootfs]\nfilename=rootfs.ext4\nhooks=post-install\n")
    # uncompressed, as the repository's own tests make them: nothing to decompress
    # under TCG, and unchanged bytes stay in place
    run("rauc", "bundle", f"--cert={cert}", f"--key={key_}", f"--keyring={ca}",
        "--mksquashfs-args=-noI -noD -noF -noX -all-root", content, out, capture_output=True)
    shutil.rmtree(content)


def build(cache: Path, host: Path, pki: tuple[Path, Path, Path], log) -> Path:
    out = cache / f"ab-{key(host, pki[0])}"
    if (out / "image.json").exists():
        log(f"ab: cached {out.name}")
        return out
    log(f"ab: building {out.name}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with tempfile.TemporaryDirectory(dir=cache, prefix="ab.") as w:
        work = Path(w)
        # the roots: the host's ext4, shrunk, one per release
        roots = {name: work / f"root-{name}.ext4" for name in RELEASES}
        t0 = time.monotonic()

        def lap(what: str) -> None:
            nonlocal t0
            log(f"ab: {what}: {time.monotonic() - t0:.1f} s")
            t0 = time.monotonic()
        run("qemu-img", "convert", "-O", "raw", host / "rootfs.qcow2", roots["factory"])
        run("e2fsck", "-fy", roots["factory"], capture_output=True)
        prune_modules(roots["factory"])
        shrink(roots["factory"])
        for name in ("update", "broken"):
            run("cp", "--sparse=always", roots["factory"], roots[name])
        for name, release in RELEASES.items():
            set_release(roots[name], release, work)
        break_provd(roots["broken"], work)
        lap("roots")
        slot_mib = -(-roots["factory"].stat().st_size // (1 << 20)) + 64

        initrd = work / "initrd.cpio"
        slim_initrd(host / "initrd.img", initrd, work)
        ukis = {s: work / f"vmclient-{s}.efi" for s in SLOTS}
        for s, uki in ukis.items():
            make_uki(uki, host / "vmlinuz", initrd, CMDLINE.format(slot=s), work)

        # the ESP: systemd-boot, loader.conf, slot A's UKI and its entry (written by the
        # backend itself: set-primary a, then blessed, as the factory image has it)
        tree = work / "esp"
        (tree / "EFI/BOOT").mkdir(parents=True)
        (tree / "EFI/vmclient").mkdir()
        (tree / "loader").mkdir()
        shutil.copy(SYSTEMD_BOOT, tree / "EFI/BOOT/BOOTX64.EFI")
        shutil.copy(ukis["a"], tree / "EFI/vmclient/vmclient-a.efi")
        # no menu, no editor: a key press must not pick a slot or edit its command line
        (tree / "loader/loader.conf").write_text("timeout 0\neditor no\n")
        backend = work / "rauc-boot-backend"
        backend.write_text(backend_text())
        backend.chmod(0o755)
        env = {**os.environ, "VMCLIENT_ESP": str(tree)}
        run(backend, "set-primary", "a", env=env)
        run(backend, "set-state", "a", "good", env=env)
        esp = work / "esp.img"
        run("mkfs.vfat", "-F", "32", "-n", "ESP", "-C", esp, str(ESP_MIB * 1024),
            capture_output=True)
        for child in sorted(tree.iterdir()):
            mcopy(esp, child, "/")

        # the disk: GPT, ESP + two root slots of the same size; slot A = the factory root
        # raw (sparse) as well: no qcow2 copy; boots write to an overlay of it
        disk = tmp / "disk.raw"
        total = 1 + ESP_MIB + 2 * slot_mib + 1
        with disk.open("wb") as f:
            f.truncate(total << 20)
        starts = {"ESP": 1, "vmroot_a": 1 + ESP_MIB, "vmroot_b": 1 + ESP_MIB + slot_mib}
        table = "label: gpt\n" + "".join(
            f"start={starts[n] * 2048}, size={size * 2048}, type={t}, name={n}\n"
            for n, size, t in (("ESP", ESP_MIB, ESP_TYPE), ("vmroot_a", slot_mib, ROOT_TYPE),
                               ("vmroot_b", slot_mib, ROOT_TYPE)))
        run("sfdisk", "-q", disk, input=table, text=True)
        for src, name in ((esp, "ESP"), (roots["factory"], "vmroot_a")):
            run("dd", f"if={src}", f"of={disk}", "bs=1M", f"seek={starts[name]}",
                "conv=notrunc,sparse", "status=none")
        lap("ESP, UKIs, disk")

        # the bundles, on a disk of their own (read-only in the guest)
        bundles = work / "bundles"
        bundles.mkdir()
        for name in ("update", "broken"):
            make_bundle(bundles / f"vmclient-{RELEASES[name]}.raucb", RELEASES[name],
                        roots[name], ukis, pki, work)
            lap(f"bundle {RELEASES[name]}")
        size = sum(p.stat().st_size for p in bundles.iterdir())
        # raw (sparse): a qcow2 copy of it would cost the build another write of both
        run("mke2fs", "-q", "-F", "-t", "ext4", "-L", "bundles", "-E", "root_owner=0:0",
            "-d", bundles, tmp / "bundles.ext4", f"{(size >> 20) * 11 // 10 + 64}M")
        lap("bundles disk")
    shutil.copy(host / "id_ed25519", tmp / "id_ed25519")
    (tmp / "id_ed25519").chmod(0o600)
    meta = json.loads((host / "image.json").read_text())
    for k in ("kernel", "initrd", "append"):
        meta.pop(k, None)
    meta.update({
        "kind": "debian-test-host-ab",
        "disk": "disk.raw",
        "disk_format": "raw",
        "firmware": {"code": str(OVMF_CODE), "vars": str(OVMF_VARS)},
        "extra_disks": [{"file": "bundles.ext4", "serial": "bundles"}],
        "bundles": {RELEASES[n]: f"vmclient-{RELEASES[n]}.raucb" for n in ("update", "broken")},
        "releases": RELEASES,
        "slot_mib": slot_mib,
        "boot_tries": BOOT_TRIES,
    })
    (tmp / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
    tmp.rename(out)
    return out
