"""The admin's SSH keys in ssh-agent: `vmclient-admin --repo sftp://…` against the real sshd
fixture, with a real `ssh-agent` and `ssh-add` (docs/admin-cli.md "ssh-agent")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures_agent import ssh_add, ssh_agent
from fixtures_sshd import SSHServer, ssh_server

from vmclient.admin import main as admin


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An admin's home with no key file and no ssh configuration; no agent in the env."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("VMCLIENT_REPOSITORY", raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return home


def repo_argv(server: SSHServer, key_dir: Path) -> list[str]:
    return ["--repo", f"sftp://root@127.0.0.1:{server.port}{server.repo}", "--key-dir",
            str(key_dir)]


def test_a_key_held_only_by_ssh_agent_logs_in(home: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    with ssh_server() as server, ssh_agent() as sock:
        (home / ".ssh" / "known_hosts").write_bytes(server.known_hosts.read_bytes())
        argv = repo_argv(server, tmp_path / "keys")
        assert admin.main([*argv, "init"]) == 64  # no key file, no agent
        err = capsys.readouterr().err
        assert "no ssh-agent ($SSH_AUTH_SOCK is not set)" in err and "ssh-add" in err, err
        ssh_add(sock, str(server.admin.key_file))  # the key is in the agent, nowhere in ~
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert admin.main([*argv, "init"]) == 0, capsys.readouterr().err
        assert (server.repo / "config").exists()
        # one of the agent's keys named by its public key file (0644: public)
        public = Path(f"{server.admin.key_file}.pub")
        assert public.stat().st_mode & 0o044
        capsys.readouterr()
        assert admin.main([*argv, "--ssh-key", str(public), "list"]) == 0, \
            capsys.readouterr().err


def test_a_passphrase_protected_key_file_is_signed_by_the_agent_holding_it(
        home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh runs with BatchMode: it cannot ask the key's passphrase, the agent signs."""
    with ssh_server() as server, ssh_agent() as sock:
        (home / ".ssh" / "known_hosts").write_bytes(server.known_hosts.read_bytes())
        key = home / ".ssh" / "id_ed25519"  # OpenSSH's default name, encrypted
        shutil.copy(server.admin.key_file, key)
        shutil.copy(f"{server.admin.key_file}.pub", f"{key}.pub")
        subprocess.run(["ssh-keygen", "-q", "-p", "-P", "", "-N", "a passphrase", "-f",
                        str(key)], check=True, capture_output=True)
        argv = repo_argv(server, tmp_path / "keys")
        assert admin.main([*argv, "--ssh-key", str(server.admin.key_file), "init"]) == 0, \
            capsys.readouterr().err
        capsys.readouterr()
        assert admin.main([*argv, "list"]) == 77  # the encrypted file alone: refused
        assert f"authentication with {key} failed" in capsys.readouterr().err
        ssh_add(sock, str(server.admin.key_file))
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert admin.main([*argv, "list"]) == 0, capsys.readouterr().err
