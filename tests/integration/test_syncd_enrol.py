"""syncd's ``Enrol(code)`` (issue 15's first start): the real vmclient-syncd on a private
system bus (real policy) with dbusmock's polkitd, a repository directory and IT's
one-time code; syncd in a mount namespace with an overlay on /etc (so chpasswd
changes a copy of the host's shadow).  The seat's active session (polkit allow_active) may enrol; a caller
polkit refuses may not; a malformed code is a clear ``InvalidCode``; the ``Enrolment``
property follows none → requested → enrolled as IT accepts the request.
``SetPassword`` sets the caller's own first password through chpasswd, once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dbus
import pytest
from fixtures_bus import PrivateSystemBus
from fixtures_virt import scaled
from powerd_harness import wait_for
from shell_harness import PasswordSandbox
from sync_env import world
from syncd_env import Peers, SyncDaemon

import testlib
from testlib import INTERFACES, need
from vmclient.manage.enrol import CodeBook, process_requests

pytestmark = pytest.mark.asyncio(loop_scope="session")

NOBODY = 65534
HERE = Path(__file__).parent
MANAGE = "org.vmclient.VMClient1.Management"
MANAGE_PATH = "/org/vmclient/VMClient1/Management"
ACTION = "org.vmclient.VMClient1.enrol"
ERR = "org.vmclient.VMClient1.Error."
PASSWORD_ACTION = "org.vmclient.VMClient1.first-password"
NONE, REQUESTED, ENROLLED = 1, 2, 3
PASSWORD = "first-start 7"


def crypt_matches(digest: str, password: str) -> bool:
    """Does ``password`` hash to ``digest`` (yescrypt or SHA-512 crypt, as chpasswd made
    it)?  Checked with perl's crypt(3), the test's only hashing."""
    r = testlib.run(["perl", "-e", "print crypt($ARGV[0], $ARGV[1])", password, digest],
                    check=True)
    return r.stdout == digest


def enrol_as(bus: PrivateSystemBus, code: str, uid: int = NOBODY,
             method: str = "Enrol") -> dict[str, Any]:
    r = testlib.run([sys.executable, HERE / "manage_client.py", method, code], env=bus.env(),
                    user=uid, timeout=scaled(120))
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def enrolment_of(d: SyncDaemon) -> int:
    obj = d.conn.get_object("org.vmclient.VMClient1.Sync", MANAGE_PATH)
    return int(obj.Get(MANAGE, "Enrolment", dbus_interface="org.freedesktop.DBus.Properties"))


async def test_the_seats_session_enrols_with_its_code_and_others_are_refused(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    need(shutil.which("chpasswd") is not None, "chpasswd is not installed")
    Peers(system_bus)
    etc = PasswordSandbox(tmp_path, "nobody", None, name="syncd-etc")
    assert etc.entry("nobody").split(":")[1] in ("*", "!", "!*", "")  # no password yet
    async with world(tmp_path) as w:
        manage = tmp_path / "manage"
        d = SyncDaemon(system_bus, w, tmp_path, [], manage=manage,
                       schedule="enabled = false\nrecheck_seconds = 1\n",
                       extra='device_name = "laptop-e"\n', wrap=etc.wrap).start()
        try:
            obj = d.conn.get_object("org.vmclient.VMClient1.Sync", MANAGE_PATH)

            def enrolment() -> int:
                return int(obj.Get(MANAGE, "Enrolment",
                                   dbus_interface="org.freedesktop.DBus.Properties"))

            # introspection is the shipped XML
            live = ET.fromstring(obj.Introspect(
                dbus_interface="org.freedesktop.DBus.Introspectable")).find(
                f"interface[@name='{MANAGE}']")
            shipped = ET.parse(INTERFACES / f"{MANAGE}.xml").getroot() \
                .find("interface")
            assert live is not None and shipped is not None
            assert sorted((m.tag, m.get("name"), m.get("type")) for m in live.iter()) == \
                sorted((m.tag, m.get("name"), m.get("type")) for m in shipped.iter())
            wait_for(lambda: enrolment() == NONE, 20, "Enrolment: not enrolled")

            book = CodeBook(tmp_path / "admin" / "codes.json")
            code = book.issue("laptop-e", int(time.time()))
            # no polkitd: root and the vmclient group only
            refused = enrol_as(system_bus, code)
            assert refused["error"] == ERR + "PermissionDenied", refused
            # polkitd says no to this caller (not the seat's active session)
            polkit = system_bus.spawn_mock("polkitd")
            polkit.SetAllowed(["org.vmclient.VMClient1.open-display"])
            refused = enrol_as(system_bus, code)
            assert refused["error"] == ERR + "PermissionDenied", refused
            assert ACTION in refused["message"], refused
            refused = enrol_as(system_bus, PASSWORD, method="SetPassword")
            assert refused["error"] == ERR + "PermissionDenied", refused
            assert PASSWORD_ACTION in refused["message"], refused
            assert enrolment() == NONE

            # the active session: polkit allows; a malformed code is refused clearly
            polkit.SetAllowed([ACTION, PASSWORD_ACTION])
            bad = enrol_as(system_bus, "ABCD-EFGH-JKLM-NPQ0")
            assert bad["error"] == ERR + "InvalidCode", bad
            assert "'0'" in bad["message"] and "ABCD" not in bad["message"], bad
            short = enrol_as(system_bus, "ABCD-EFGH")
            assert short["error"] == ERR + "InvalidCode" and "has 8" in short["message"], short
            assert enrolment() == NONE

            ok = enrol_as(system_bus, code.lower())  # case and dashes do not matter
            assert "reply" in ok, ok
            assert enrolment() == REQUESTED

            # IT accepts the request; syncd's next cycle completes the enrolment
            [done] = await process_requests(w.remote, w.admin, book, int(time.time()))
            assert done.enrolled and done.device == ok["reply"], done
            wait_for(lambda: enrolment() == ENROLLED, 60, "Enrolment: enrolled\n" + d.log())
            again = enrol_as(system_bus, code)
            assert again["error"] == ERR + "Failed" and "enrolled already" in again["message"], \
                again
            # the guard routes PostponeHostRestart (sync.manage): nothing installed, said so
            sync = d.conn.get_object("org.vmclient.VMClient1.Sync", "/org/vmclient/VMClient1/Sync")
            with pytest.raises(dbus.exceptions.DBusException) as refused_later:
                sync.PostponeHostRestart(dbus.UInt32(0),
                                         dbus_interface="org.vmclient.VMClient1.Sync")
            assert refused_later.value.get_dbus_name() == ERR + "InvalidArgs"
            assert "no host update waits for a restart" in str(refused_later.value)

            # the caller's first password: chpasswd hashes it; a second call is refused
            short = enrol_as(system_bus, "short", method="SetPassword")
            assert short["error"] == ERR + "InvalidArgs" and "at least 8" in short["message"]
            assert etc.entry("nobody").split(":")[1] in ("*", "!", "!*", "")
            assert enrol_as(system_bus, PASSWORD, method="SetPassword") == {"reply": "nobody"}
            digest = etc.entry("nobody").split(":")[1]
            assert digest.startswith("$"), digest
            assert crypt_matches(digest, PASSWORD) and not crypt_matches(digest, PASSWORD + "x")
            again = enrol_as(system_bus, "another password", method="SetPassword")
            assert again["error"] == ERR + "PasswordSetAlready", again
            assert "has a password already" in again["message"], again
            assert etc.entry("nobody").split(":")[1] == digest
        finally:
            d.stop()


async def test_on_an_sftp_repository_the_request_goes_through_the_drop_box(
        system_bus: PrivateSystemBus, tmp_path: Path) -> None:
    """Before enrolment the laptop has no account on the storage server: syncd's Enrol
    delivers the request through the enrolment drop box (the real sshd, the account as
    ``vmclient-admin enrol --dropbox`` sets it up), and IT's code then enrols it.

    The laptop's ``[repository] location`` is the one every laptop ships, without a user
    (``sftp://host/``): once IT has confined the device's account (with the SSH key the
    request carried), syncd completes the enrolment through that account, ``vmc-<id>``,
    named from the device id the code enrolment made (and provd, sharing the section,
    opens the same account: test_journey.py)."""
    from fixtures_sshd import keygen, ssh_server

    from vmclient.admin.sshd import confinement
    from vmclient.store.layout import account_name
    from vmclient.transport.localfs import LocalDirStore

    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    Peers(system_bus)
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed([ACTION])
    async with contextlib.AsyncExitStack() as stack:
        server = stack.enter_context(ssh_server())
        w = await stack.enter_async_context(world(tmp_path))
        dropbox = server.add_dropbox()
        d = SyncDaemon(system_bus, w, tmp_path, [], manage=tmp_path / "manage",
                       schedule="enabled = false\nrecheck_seconds = 1\n",
                       extra=f'device_name = "laptop-s"\ndropbox_user = "{dropbox.user}"\n'
                             f'dropbox_key = "{dropbox.key_file}"\n')
        # the laptop's [repository] as the image ships it: the server, no account named
        # (the device's own is not there yet); key_file is the one enrolment makes
        d.config.write_text(d.config.read_text().replace(
            f'location = "{w.repo_dir}"\n',
            f'location = "sftp://127.0.0.1:{server.port}/"\n'
            f'known_hosts = "{server.known_hosts}"\n'
            f'key_file = "{tmp_path / "device" / "ssh_ed25519"}"\n'))
        # the datacenter's repository (its signed config) is the one the server serves
        (server.repo / "config").write_bytes((w.repo_dir / "config").read_bytes())
        (server.repo / "config").chmod(0o644)
        # IT's account for the device, set up ahead (sshd restarts for its Match block,
        # which would race the laptop's logins): the device keys, hence its id, are
        # there already; the SSH key it will log in with is made by the enrolment
        server.confine(confinement(w.a.id, keygen(tmp_path / "placeholder"),
                                   str(server.repo), str(server.keys)))
        d.start()
        try:
            book = CodeBook(tmp_path / "admin" / "codes.json")
            code = book.issue("laptop-s", int(time.time()))
            ok = enrol_as(system_bus, code)
            assert "reply" in ok, (ok, d.log())
            device = ok["reply"]
            assert (server.repo / "enrolment" / device).is_file()
            # IT: vmclient-admin enrol --accept (record, then the account it prints)
            [done] = await process_requests(LocalDirStore(server.repo, file_mode=0o644),
                                            w.admin, book, int(time.time()))
            assert done.enrolled and done.device == device and done.name == "laptop-s", done
            assert device == w.a.id
            # the last line of the script IT runs: the key the request carried (sshd
            # reads the file at each login)
            conf = confinement(device, done.ssh_key, str(server.repo), str(server.keys))
            await asyncio.to_thread(Path(conf.authorized_keys_path).write_text,
                                    conf.authorized_keys + "\n")
            wait_for(lambda: enrolment_of(d) == ENROLLED, 60,
                     "Enrolment over the device's own account\n" + d.log()
                     + server.log.read_text()[-3000:])
            # only the device's account can read devices/<id>/device (not the drop box)
            assert (server.keys / account_name(device)).is_file()
        finally:
            d.stop()
