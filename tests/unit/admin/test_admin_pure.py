"""The pure parts of vmclient-admin: sshd confinement text, the transport factory, keys."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vmclient.admin import keys
from vmclient.admin.progress import PlainProgress
from vmclient.admin.sshd import account_name, confinement
from vmclient.errors import UsageError
from vmclient.transport import open_store, ssh
from vmclient.transport.localfs import LocalDirStore

DEVICE = "0123456789abcdef0123456789abcdef"


def test_confinement_chroots_the_device_account_and_forces_internal_sftp() -> None:
    c = confinement(DEVICE, "ssh-ed25519 AAAAC3Nza dev", "/srv/repo", "/etc/ssh/vmc")
    assert c.account == account_name(DEVICE) == "vmc-0123456789ab"
    lines = [line.strip() for line in c.match_block.splitlines()]
    assert "Match User vmc-0123456789ab" in lines
    assert "ChrootDirectory /srv/repo" in lines
    assert "ForceCommand internal-sftp -u 0022" in lines
    assert "AuthorizedKeysFile /etc/ssh/vmc/%u" in lines
    assert {"AllowTcpForwarding no", "PermitTTY no", "X11Forwarding no"} <= set(lines)
    assert c.authorized_keys == "restrict ssh-ed25519 AAAAC3Nza dev"
    modes = {cmd[-1]: cmd[cmd.index("-m") + 1] for cmd in c.commands if cmd[0] == "install"}
    assert modes["/srv/repo"] == "0755"  # sshd: the chroot is root-owned, not writable
    assert modes["/srv/repo/devices"] == "0711"  # no listing of other devices
    assert modes[f"/srv/repo/devices/{DEVICE}"] == "1770"  # own dir; sticky protects root's
    script = c.script()
    assert script.startswith("set -e\n") and "usermod -p '*' vmc-0123456789ab" in script


def test_a_local_path_opens_a_directory_store_and_urls_need_a_pinned_host_key(
        tmp_path: Path) -> None:
    store = open_store(str(tmp_path), file_mode=0o644)
    assert isinstance(store, LocalDirStore) and store.file_mode == 0o644
    with pytest.raises(UsageError, match="known_hosts"):
        open_store("sftp://dev@example.org/")
    with pytest.raises(UsageError, match="user@host"):
        open_store("sftp://example.org/", key_file="k", known_hosts="kh")
    with pytest.raises(UsageError, match="unsupported"):
        open_store("ftp://u@example.org/")


def test_an_sftp_url_names_user_host_port_and_repository_path() -> None:
    store = open_store("sftp://vmc-01@repo.example:2222/srv/repo", key_file="/k",
                       known_hosts="/kh")
    t = store.target  # type: ignore[attr-defined]
    assert (t.user, t.host, t.port, t.root) == ("vmc-01", "repo.example", 2222, "/srv/repo")
    command = ssh.argv(t.endpoint)
    assert command[-4:] == ["-s", "--", "repo.example", "sftp"]
    assert command[command.index("-p"):command.index("-l") + 2] == ["-p", "2222", "-l", "vmc-01"]
    assert 'UserKnownHostsFile="/kh"' in command and 'IdentityFile="/k"' in command
    assert open_store("sftp://u@h/", key_file="/k", known_hosts="/kh").target.root == "/"  # type: ignore[attr-defined]


def test_admin_keys_are_private_reused_and_never_inside_the_repository(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="inside the repository"):
        keys.check_outside(tmp_path / "repo" / "keys", tmp_path / "repo")
    keys.check_outside(tmp_path / "keys", tmp_path / "repo")
    k = keys.create(tmp_path / "keys")
    assert (tmp_path / "keys" / keys.ADMIN_KEY).stat().st_mode & 0o777 == 0o600
    again = keys.create(tmp_path / "keys")
    assert again.admin.public_key() == k.admin.public_key()
    k.record_serial("r", 5)
    k.record_serial("r", 3)
    assert keys.load(tmp_path / "keys").known_serial("r") == 5


def test_plain_progress_prints_a_line_per_tenth() -> None:
    out = io.StringIO()
    p = PlainProgress("publish x", out)
    p.total(100)
    for _ in range(100):
        p.advance(1)
    lines = out.getvalue().splitlines()
    assert 10 <= len(lines) <= 12 and lines[-1].startswith("publish x: 100% ")


def test_ssh_g_output_resolves_the_url_what_the_url_names_wins() -> None:
    from vmclient.admin.session import parse_ssh_g, resolved_url
    found = parse_ssh_g("hostname 10.0.0.7\nport 2200\nuser backup\n"
                        "identityfile ~/.ssh/dc\nidentityfile ~/.ssh/id_ed25519\n")
    assert found["identityfile"] == ["~/.ssh/dc", "~/.ssh/id_ed25519"]
    assert resolved_url("sftp://dc/srv/repo", found) == "sftp://backup@10.0.0.7:2200/srv/repo"
    assert resolved_url("sftp://it%40corp@dc:22/srv", found) == "sftp://it%40corp@10.0.0.7:22/srv"
    assert resolved_url("sftp://dc/", parse_ssh_g("hostname ::1\nport 22\nuser u\n")) == \
        "sftp://u@[::1]:22/"
