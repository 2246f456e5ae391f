"""A private VM's media cannot carry a root-only file into a disk (issue 13, security 1).

vmclient-provd (root) on a private system bus with the shipped policy; the attacker
is ``nobody`` with the ``vmclient`` group, which may call provd.  A root-only file
(0600, as the device keys are) is the secret.  Each attack is refused with an error
naming the media and the reason, and leaves no domain, disk or key behind:

* a recipe naming the secret: ``vmclientctl vm install`` opens media with the
  user's rights (refused by the kernel), and a raw ``Install`` call may name
  media only inside the media directory;
* a symbolic link in the media directory (to the file, or a directory on the way);
* an ``O_PATH`` descriptor of the secret passed to ``InstallFromMedia`` (its
  re-opening would be a fresh open as root);
* a qcow2 the user owns whose backing file, or external data file, is the secret.

And what a user may do still works: their own qcow2 and ISO, installed through the
descriptor, the ISO attached from provd's own copy.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from fixtures_bus import PrivateSystemBus
from fixtures_virt import URI
from provision_env import Env, assert_no_leftovers, need_tools, provision_env, write_config

from testlib import SERVICES, need, run, vmclientctl
from vmclient.host.keys import DeviceKeys, VMKeys
from vmclient.provision import qemuimg

pytestmark = pytest.mark.asyncio(loop_scope="session")
NAME = PATH_IFACE = "org.vmclient.VMClient1.Provisioning"
PATH = "/org/vmclient/VMClient1/Provisioning"
NOBODY = 65534
SECRET = b"DEVICE-KEY-SECRET-7f3a9c" * 43690  # ~1 MiB, recognisable anywhere

# A raw D-Bus client as the attacker (dbus-python, which passes descriptors).
CALL = """
import dbus, os, sys
b = dbus.bus.BusConnection(sys.argv[1])
member, text = sys.argv[2], open(sys.argv[3]).read()
sig, args = "s", [text]
if member == "InstallFromMedia":
    sig, args = "sh", [text, dbus.types.UnixFd(os.open(sys.argv[4], os.O_PATH))]
if member == "Start":
    args = [text.strip()]
try:
    print("OK", b.call_blocking(%r, %r, %r, member, sig, args, timeout=240))
except dbus.DBusException as e:
    print(e.get_dbus_name(), e.get_dbus_message())
""" % (NAME, PATH, PATH_IFACE)


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools("dbus-daemon", "setpriv", vm=False)


@pytest.fixture
def group() -> int:
    try:
        return grp.getgrnam("vmclient").gr_gid
    except KeyError:
        need(shutil.which("groupadd") is not None, "no vmclient group and no groupadd")
        run(["groupadd", "--system", "vmclient"], check=True)
        return grp.getgrnam("vmclient").gr_gid


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory everyone may traverse (tmp_path is root's 0700): the secret (root,
    0600) and ``user/``, the attacker's own directory."""
    d = Path(tempfile.mkdtemp(prefix="vmclient-media-"))
    try:
        d.chmod(0o755)
        (d / "secret.key").write_bytes(SECRET)
        (d / "secret.key").chmod(0o600)
        (d / "user").mkdir(mode=0o755)
        os.chown(d / "user", NOBODY, NOBODY)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def provd(env: Env, tmp: Path, bus: PrivateSystemBus) -> Iterator[dict[str, str]]:
    config = write_config(env, tmp)
    penv = {**bus.env(), "PYTHONPATH": str(SERVICES / "src")}
    log_path = tmp / "provd.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vmclient.provision.daemon", "--config",
                                 str(config)], stdout=log, stderr=subprocess.STDOUT, env=penv)
    try:
        deadline = time.monotonic() + 30
        while vmclientctl("vm", "list", env=penv).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        yield penv
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def as_user(gid: int, penv: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return run(argv, env=penv, user=NOBODY, groups=[gid], timeout=300)


def ctl(gid: int, penv: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return as_user(gid, penv, sys.executable, "-m", "vmclient.cli.main", "vm", *args)


def raw_call(gid: int, penv: dict[str, str], member: str, *args: str) -> str:
    r = as_user(gid, penv, "/usr/bin/python3", "-c", CALL, penv["DBUS_SYSTEM_BUS_ADDRESS"],
                member, *args)
    return r.stdout.strip() + r.stderr


def user_file(path: Path) -> Path:
    os.chown(path, NOBODY, NOBODY)
    return path


def no_secret_below(root: Path) -> None:
    for f in root.rglob("*") if root.exists() else []:
        if f.is_file():
            assert SECRET[:64] not in f.read_bytes(), f


async def test_media_a_group_member_cannot_read_is_refused(
        system_bus: PrivateSystemBus, tmp_path: Path, group: int, public: Path) -> None:
    async with provision_env(tmp_path) as env:
        env.cfg.media_dir.mkdir()
        secret, user = public / "secret.key", public / "user"
        with provd(env, tmp_path, system_bus) as penv:
            def recipe(suffix: str, image: str) -> Path:
                return user_file(env.recipe(user, suffix, kind="private", image=image,
                                            extra="size_gib = 1\n"))

            # the CLI opens the media with the user's rights: the kernel refuses
            r = ctl(group, penv, "install", str(recipe("cli", f'qcow2 = "{secret}"')))
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert f"Install media {secret}: cannot open it: Permission denied" in r.stderr
            assert_no_leftovers(env, env.name("cli"))

            # the same recipe straight to provd: media by path only inside the media dir
            for suffix, kind in (("raw", "qcow2"), ("iso", "iso"), ("rawf", "raw")):
                out = raw_call(group, penv, "Install", str(recipe(suffix, f'{kind} = "{secret}"')))
                assert "Error.Failed" in out and f"{secret}: a recipe may name media only " \
                    f"inside {env.cfg.media_dir}" in out, out
                assert_no_leftovers(env, env.name(suffix))

            # symbolic links in the media dir: to the file, and a directory on the way
            (env.cfg.media_dir / "link.qcow2").symlink_to(secret)
            (env.cfg.media_dir / "dir").symlink_to(public)
            for suffix, path in (("lnk", env.cfg.media_dir / "link.qcow2"),
                                 ("dir", env.cfg.media_dir / "dir" / "secret.key")):
                out = raw_call(group, penv, "Install", str(recipe(suffix, f'raw = "{path}"')))
                assert "is a symbolic link (refused)" in out, out
                assert_no_leftovers(env, env.name(suffix))

            # an O_PATH descriptor of the secret (the user may search its directory)
            out = raw_call(group, penv, "InstallFromMedia",
                           str(recipe("opath", f'raw = "{secret}"')), str(secret))
            assert f"Install media {secret}: not opened for reading" in out, out
            assert_no_leftovers(env, env.name("opath"))

            # a qcow2 of the user's whose backing file / external data file is the secret
            backed = user / "backed.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", backed,
                 "1M"], check=True)
            external = user / "external.qcow2"
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                 f"data_file={user / 'scratch'}", external, "1M"], check=True)
            # point the data file at the secret without qemu-img writing it
            run(["qemu-img", "amend", "-q", "-f", "qcow2", "-o", f"data_file={secret}",
                 external], check=True)
            for f in (backed, external):
                user_file(f)
            for suffix, f, why in (("back", backed, "has a backing file"),
                                   ("data", external, "has an external data file")):
                r = ctl(group, penv, "install", str(recipe(suffix, f'qcow2 = "{f}"')))
                assert r.returncode == 1 and f"Install media {f}: {why}" in r.stderr, r.stderr
                assert_no_leftovers(env, env.name(suffix))
            assert secret.read_bytes() == SECRET
            no_secret_below(env.cfg.images_dir)

            # a VM name is a name (security point 8): refused at provd's boundary
            bad = user / "bad-name"
            bad.write_text("../x\n")
            out = raw_call(group, penv, "Start", str(bad))
            assert "Error.InvalidArgs Not a VM name: '../x'" in out, out


async def test_media_of_the_users_own_install_through_the_descriptor(
        system_bus: PrivateSystemBus, tmp_path: Path, group: int, public: Path) -> None:
    async with provision_env(tmp_path) as env:
        user = public / "user"
        plain = user / "mine.raw"
        plain.write_bytes(os.urandom(1 << 20))
        mine = user / "mine.qcow2"
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", plain, mine], check=True)
        iso = user / "installer.iso"
        iso.write_bytes(os.urandom(1 << 20))
        for f in (mine, iso):
            user_file(f)
        with provd(env, tmp_path, system_bus) as penv:
            r = ctl(group, penv, "install", str(user_file(env.recipe(
                user, "imp", kind="private", image=f'qcow2 = "{mine}"'))))
            assert r.returncode == 0 and "private VM, shutoff" in r.stdout, r.stderr
            keys = VMKeys(env.cfg.state_dir, DeviceKeys.load_or_create(env.cfg.device_dir))
            system = env.cfg.images_dir / env.name("imp") / "system.qcow2"
            assert await qemuimg.identical(system, keys.load(env.name("imp")).passphrase(),
                                           plain)
            assert sorted(p.name for p in system.parent.iterdir()) == ["data.qcow2",
                                                                      "system.qcow2"]

            r = ctl(group, penv, "install", str(user_file(env.recipe(
                user, "iso", kind="private", image=f'iso = "{iso}"', extra="size_gib = 1\n"))))
            assert r.returncode == 0, r.stderr
            copy = env.cfg.images_dir / env.name("iso") / "install.iso"
            conn = libvirt.open(URI)
            try:
                xml = conn.lookupByName(env.name("iso")).XMLDesc(0)
            finally:
                conn.close()
            assert f"<source file='{copy}'" in xml and f"file='{iso}'" not in xml, xml
            assert copy.read_bytes() == iso.read_bytes() and copy.stat().st_uid == 0
            r = ctl(group, penv, "eject", env.name("iso"))
            assert r.returncode == 0 and str(copy) in r.stdout, r.stderr
            assert not copy.exists() and iso.exists()  # provd's copy goes, the user's stays
            for suffix in ("imp", "iso"):
                assert ctl(group, penv, "remove", "--yes", env.name(suffix)).returncode == 0
