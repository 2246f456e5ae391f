"""The ssh command line and the reading of ssh's failures (pure parts of transport.ssh)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.store.errors import LocalSyncError
from vmclient.transport.ssh import Endpoint, Failure, argv, check_key_file, diagnose, last_lines

CHANGED = """\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Offending ED25519 key in /etc/vmclient/known_hosts:1
Host key verification failed.
"""


@pytest.mark.parametrize(("stderr", "failure"), [
    (CHANGED, Failure.HOST_KEY_CHANGED),
    ("No ED25519 host key is known for [127.0.0.1]:2222 and you have requested strict "
     "checking.\r\nHost key verification failed.\r\n", Failure.HOST_KEY_UNKNOWN),
    ("dev@repo.example: Permission denied (publickey).\r\n", Failure.AUTH),
    ("Received disconnect from 10.0.0.1 port 22:2: Too many authentication failures",
     Failure.AUTH),
    ("subsystem request failed on channel 0\r\n", Failure.SUBSYSTEM),
    ("ssh: connect to host 127.0.0.1 port 2222: Connection refused\r\n", Failure.UNREACHABLE),
    ("ssh: Could not resolve hostname nowhere: Name or service not known", Failure.UNREACHABLE),
    ("Connection closed by 127.0.0.1 port 2222\r\n", Failure.UNREACHABLE),
    ("", Failure.UNREACHABLE),
])
def test_ssh_failures_are_told_apart_and_only_refusals_are_final(stderr: str,
                                                                 failure: Failure) -> None:
    assert diagnose(255, stderr) is failure
    assert failure.final is (failure not in (Failure.UNREACHABLE, Failure.OTHER))


def test_the_message_shown_drops_the_banner_and_unprintable_characters() -> None:
    assert last_lines(CHANGED) == ("IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY! / "
                                   "Offending ED25519 key in /etc/vmclient/known_hosts:1 / "
                                   "Host key verification failed.")
    assert last_lines("evil\x1b]52;c;AAAA\x07 banner") == "evil?]52;c;AAAA? banner"


def test_the_command_line_pins_the_host_key_and_the_key_and_reads_no_user_config() -> None:
    e = Endpoint("repo.example", 2222, "vmc-1", Path("/k 1%h"), Path("/kh"))
    cmd = argv(e)
    assert cmd[:3] == ["ssh", "-F", "none"]
    options = {cmd[i + 1].split("=", 1)[0]: cmd[i + 1].split("=", 1)[1]
               for i, a in enumerate(cmd) if a == "-o"}
    assert options["BatchMode"] == "yes" and options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == '"/kh"' and options["GlobalKnownHostsFile"] == "none"
    assert options["IdentitiesOnly"] == "yes" and options["IdentityAgent"] == "none"
    assert options["IdentityFile"] == '"/k 1%%h"'  # quoted, no token expanded
    assert cmd[-4:] == ["-s", "--", "repo.example", "sftp"]
    assert argv(Endpoint("h", 22, "u", Path("/k"), Path("/kh"),
                         ssh_config=Path("/etc/c")))[1:3] == ["-F", "/etc/c"]
    with pytest.raises(LocalSyncError, match="invalid SSH host"):
        argv(Endpoint("-oProxyCommand=sh", 22, "u", Path("/k"), Path("/kh")))


def test_a_key_file_readable_by_others_is_refused_naming_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "ssh.key"
    key.write_text("key")
    key.chmod(0o640)
    with pytest.raises(LocalSyncError, match=r"mode 0640; it must be 0600 \(chmod 600 "):
        check_key_file(key)
    key.chmod(0o600)
    check_key_file(key)
    with pytest.raises(LocalSyncError, match="cannot be read"):
        check_key_file(tmp_path / "absent")


def _options(cmd: list[str]) -> dict[str, str]:
    return {cmd[i + 1].split("=", 1)[0]: cmd[i + 1].split("=", 1)[1]
            for i, a in enumerate(cmd) if a == "-o"}


def test_the_admin_may_add_an_agent_and_log_in_with_its_keys_alone() -> None:
    with_file = _options(argv(Endpoint("h", 22, "u", Path("/k"), Path("/kh"),
                                       agent=Path("/run/agent.sock"))))
    assert with_file["IdentityAgent"] == '"/run/agent.sock"'
    assert with_file["IdentitiesOnly"] == "yes" and with_file["IdentityFile"] == '"/k"'
    only_agent = _options(argv(Endpoint("h", 22, "u", None, Path("/kh"), agent=Path("/a"))))
    assert only_agent["IdentityFile"] == "none" and only_agent["IdentitiesOnly"] == "no"
    with pytest.raises(LocalSyncError, match="neither a key file nor an ssh-agent"):
        argv(Endpoint("h", 22, "u", None, Path("/kh")))
    with pytest.raises(LocalSyncError, match="unusable path"):  # ssh would expand ${HOME}
        argv(Endpoint("h", 22, "u", None, Path("/kh"), agent=Path("/${HOME}/a")))


def test_the_laptop_daemons_never_use_an_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmclient.transport import Repository
    from vmclient.transport.sftp import SFTPStore
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/user/0/agent.sock")
    store = Repository(location="sftp://repo.example/").open(account=lambda: "vmc-1")
    assert isinstance(store, SFTPStore)
    options = _options(argv(store.target.endpoint))
    assert options["IdentityAgent"] == "none" and options["IdentitiesOnly"] == "yes"


def test_with_an_agent_a_public_key_file_may_name_the_key_and_be_world_readable(
        tmp_path: Path) -> None:
    pub = tmp_path / "id.pub"
    pub.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVmRoSDy8HnTMgOc3hr+eXi0V3ulm x\n")
    pub.chmod(0o644)
    check_key_file(pub, public_ok=True)
    with pytest.raises(LocalSyncError, match="mode 0644"):  # without an agent: a key file
        check_key_file(pub)
    pub.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    with pytest.raises(LocalSyncError, match="mode 0644"):  # a private key stays refused
        check_key_file(pub, public_ok=True)
