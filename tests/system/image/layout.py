"""The Yocto image's storage layout, put into the Debian test host's root.

The test host mirrors what meta-vmclient builds, from the layer's own files,
so that a system test sees what a laptop would (issue 16, defects 3 and 4):

- a read-only root (fstab and the kernel command line say ``ro``);
- openembedded-core's volatile layout: ``/tmp`` and ``/var/volatile`` tmpfs,
  ``/var/log`` and ``/var/tmp`` links into the latter, and volatile-binds' units copying
  ``/var/lib``, ``/var/cache``, ``/var/spool`` and ``/srv`` onto it
  (``oe-core/``: volatile-binds' ``mount-copybind`` and unit template and
  systemd's ``00-create-volatile.conf``, copied unchanged; VOLATILE_BINDS at
  its default, which the vmclient distro keeps);
- vmclient-persist (``meta-vmclient/recipes-core/vmclient-persist``): the data
  partition's repart.d file, crypttab, mount unit and one bind unit per line
  of the distro's ``VMCLIENT_PERSISTENT_BINDS``, generated from the recipe's
  templates as its do_compile does, and its journald drop-in.

What differs, and why, is the test host's own (``overlay/``): the data
partition is on a second disk (the root is a whole-disk ext4 made without a
partition table), so systemd-repart is pointed at it; see README.md.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAYER = HERE.parents[2] / "meta-vmclient"
PERSIST = LAYER / "recipes-core" / "vmclient-persist" / "files"
WESTON_INIT = LAYER / "recipes-graphics" / "wayland" / "weston-init"
DISTRO_CONF = LAYER / "conf" / "distro" / "vmclient.conf"
OE_CORE = HERE / "oe-core"

# bitbake.conf's paths for a merged-/usr systemd distro, as the Debian host has them
PATHS = {"localstatedir": "/var", "sysconfdir": "/etc", "base_sbindir": "/sbin",
         "libexecdir": "/usr/libexec"}
UNIT_DIR = "usr/lib/systemd/system"
# The test host's seat user and its desktop unit (weston-init's WESTON_USER and
# weston.service on the image; image/build and overlay/ here)
WESTON_USER = "weston"
DESKTOP_UNIT = {"weston.service": "vmclient-desktop.service"}
IMAGE_PYTHON = "/usr/bin/python3 -m vmclient."  # the image's Python runs a services' module
VENV = "/opt/vmclient"  # where the test host has the services (tests/system/image/build)
# volatile-binds.bb's default (the vmclient distro does not change it)
VOLATILE_BINDS = (
    ("/var/volatile/lib", "/var/lib"),
    ("/var/volatile/cache", "/var/cache"),
    ("/var/volatile/spool", "/var/spool"),
    ("/var/volatile/srv", "/srv"),
)


class LayoutError(Exception):
    """The layer's files are not what this script can read."""


def _expand(value: str, variables: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            raise LayoutError(f"{DISTRO_CONF}: ${{{name}}} is not a variable the test host knows")
        return variables[name]
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, value)


def distro_var(text: str, name: str) -> str:
    """The value of ``NAME = "..."`` in a bitbake conf (continuation lines joined)."""
    m = re.search(rf'^{name}\s*=\s*"((?:[^"\\]|\\.)*)"', text, re.M | re.S)
    if not m:
        raise LayoutError(f"{DISTRO_CONF}: no {name} = \"...\"")
    return m.group(1).replace("\\\n", "")


def persistent_binds(conf_text: str) -> tuple[str, list[tuple[str, str]]]:
    """(VMCLIENT_DATA_DIR, [(directory on the data partition, mount point)])."""
    variables = dict(PATHS)
    data_dir = _expand(distro_var(conf_text, "VMCLIENT_DATA_DIR"), variables)
    variables["VMCLIENT_DATA_DIR"] = data_dir
    binds = []
    for line in distro_var(conf_text, "VMCLIENT_PERSISTENT_BINDS").split("\\n"):
        fields = _expand(line, variables).split()
        if not fields:
            continue
        if len(fields) != 2:
            raise LayoutError(f"{DISTRO_CONF}: VMCLIENT_PERSISTENT_BINDS line {line.strip()!r}"
                              " is not '<directory> <mount point>'")
        binds.append((fields[0], fields[1]))
    return data_dir, binds


def data_users(conf_text: str) -> list[str]:
    """The distro's VMCLIENT_DATA_USERS: the units that require vmclient-data.target."""
    return distro_var(conf_text, "VMCLIENT_DATA_USERS").split()


def _fill(template: Path, **subs: str) -> str:
    text = template.read_text()
    for key, value in subs.items():
        text = text.replace(f"@{key}@", value)
    if re.search(r"@[a-z_]+@", text):
        raise LayoutError(f"{template}: a placeholder is left: {re.findall(r'@[a-z_]+@', text)}")
    return text


def unit_name(path: str) -> str:
    return path.strip("/").replace("/", "-")


def units() -> dict[str, str]:
    """{unit file name: text} of every unit the layout installs and enables."""
    out: dict[str, str] = {}
    # volatile-binds.bb's do_compile
    for what, where in VOLATILE_BINDS:
        text = _fill(OE_CORE / "volatile-binds.service.in", what=what, where=where,
                     whatparent=what.rsplit("/", 1)[0], whereparent=where.rsplit("/", 1)[0],
                     avoid_overlayfs="0")
        if where == "/var/lib":  # the random seed is stored under /var/lib
            text = re.sub(r"^(Before=.*)$", r"\1 systemd-random-seed.service", text, flags=re.M)
            text = re.sub(r"^(WantedBy=.*)$", r"\1 systemd-random-seed.service", text, flags=re.M)
        out[unit_name(what) + ".service"] = text
    # vmclient-persist.bb's do_compile
    data_dir, binds = persistent_binds(DISTRO_CONF.read_text())
    out[unit_name(data_dir) + ".mount"] = _fill(PERSIST / "vmclient-data.mount.in",
                                                datadir=data_dir)
    persist = []
    for what, where in binds:
        name = f"vmclient-persist-{unit_name(where)}.service"
        persist.append(name)
        out[name] = _fill(
            PERSIST / "vmclient-persist.service.in", what=what, where=where, datadir=data_dir,
            base_sbindir=PATHS["base_sbindir"])
    for name in ("vmclient-machine-id.service", "vmclient-recovery-key-used.service"):
        out[name] = _fill(PERSIST / f"{name}.in", datadir=data_dir,
                          base_sbindir=PATHS["base_sbindir"], libexecdir=PATHS["libexecdir"])
    out["vmclient-data.target"] = _fill(
        PERSIST / "vmclient-data.target.in",
        units=" ".join([unit_name(data_dir) + ".mount", *persist, "vmclient-machine-id.service"]))
    return out


# Started by what requires them (the recipe's VMCLIENT_DATA_STATIC), not enabled.
STATIC = ("vmclient-data.target", "vmclient-recovery-key-used.service")
# systemd-cryptsetup@vmdata.service's drop-in: the recovery key when the TPM2 refuses
RECOVERY_DROPIN = f"{UNIT_DIR}/systemd-cryptsetup@vmdata.service.d/50-vmclient-recovery.conf"


def recovery_dropin() -> str:
    return _fill(PERSIST / "systemd-cryptsetup-vmdata.conf.in", libexecdir=PATHS["libexecdir"])


def _put(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    path.write_text(text)
    path.chmod(mode)


def install(root: Path) -> list[str]:
    """Put the layout into the root file system; the units to enable."""
    made = units()
    for name, text in made.items():
        _put(root, f"{UNIT_DIR}/{name}", text)
    _put(root, "usr/sbin/mount-copybind", (OE_CORE / "mount-copybind").read_text(), 0o755)
    # systemd.bb: the volatile directories, and /var/log a link into them
    _put(root, "usr/lib/tmpfiles.d/00-create-volatile.conf",
         (OE_CORE / "00-create-volatile.conf").read_text()
         + "L\t\t/var/log\t\t-\t-\t-\t-\t/var/volatile/log\n")
    # volatile-binds.bb: no tmpfiles lines that write to the read-only /etc and /home
    for masked in ("etc.conf", "home.conf"):
        link = root / "etc/tmpfiles.d" / masked
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # base-files (fs-perms-volatile-{log,tmp}.txt): /var/log and /var/tmp live on
    # the tmpfs; what the Debian packages put there at build time is gone, as on
    # the image
    (root / "var/volatile").mkdir(exist_ok=True)
    for name in ("log", "tmp"):
        path = root / "var" / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
        path.symlink_to(f"volatile/{name}")
    # systemd.bb keeps tmp.mount when /tmp is volatile (Debian ships it unused)
    debian_tmp = root / "usr/share/systemd/tmp.mount"
    if debian_tmp.exists():
        _put(root, f"{UNIT_DIR}/tmp.mount", debian_tmp.read_text())
        made["tmp.mount"] = ""
    # vmclient-persist.bb's do_install
    _put(root, "usr/lib/repart.d/50-vmdata.conf", (PERSIST / "50-vmdata.conf").read_text())
    _put(root, "etc/crypttab", (PERSIST / "crypttab").read_text())
    _put(root, "usr/lib/systemd/journald.conf.d/50-vmclient.conf",
         (PERSIST / "50-vmclient-journal.conf").read_text())
    _put(root, "usr/libexec/vmclient-data-recovery",
         (PERSIST / "vmclient-data-recovery").read_text(), 0o755)
    _put(root, RECOVERY_DROPIN, recovery_dropin())
    for user in data_users(DISTRO_CONF.read_text()):
        _put(root, f"{UNIT_DIR}/{DESKTOP_UNIT.get(user, user)}.d/50-vmclient-data.conf",
             (PERSIST / "vmclient-data-user.conf").read_text())
    # weston-init.bbappend: the seat user's home, made on the data partition
    _put(root, "usr/lib/tmpfiles.d/vmclient-weston-home.conf",
         _fill(WESTON_INIT / "vmclient-home.conf", WESTON_USER_HOME=f"/home/{WESTON_USER}",
               WESTON_USER=WESTON_USER))
    # and weston.service's drop-in: Weston starts with the keyboard layout the first
    # start kept in that home, and at the screen's scale (vmclient.shell.hidpi, which
    # the test host's Python has in the services' venv: the image's python3 has it)
    dropin = _fill(WESTON_INIT / "50-vmclient.conf", WESTON_USER_HOME=f"/home/{WESTON_USER}",
                   bindir="/usr/bin", sysconfdir="/etc")
    if dropin.count(IMAGE_PYTHON) != 1:
        raise LayoutError(f"{WESTON_INIT / '50-vmclient.conf'}: no '{IMAGE_PYTHON}' to run "
                          "in the services' venv")
    _put(root, f"{UNIT_DIR}/{DESKTOP_UNIT['weston.service']}.d/50-vmclient.conf",
         dropin.replace(IMAGE_PYTHON, f"{VENV}/bin/python -m vmclient."))
    return sorted(set(made) - set(STATIC))


if __name__ == "__main__":  # print what would be installed
    for name, text in units().items():
        print(f"# {name}\n{text}")
    print(os.linesep.join(f"{w} -> {m}" for w, m in persistent_binds(DISTRO_CONF.read_text())[1]))
