"""The admin's keys on a PKCS#11 token (SoftHSM 2): the signing key through python-pkcs11
behind the key directory's ``admin.pkcs11``, the SSH key through ssh-agent (``ssh-add -s``)
against the real sshd fixture (docs/admin-cli.md "Keys on a PKCS#11 token")."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures_agent import PIN, TOKEN, SoftHSM, softhsm, ssh_add, ssh_agent
from fixtures_sshd import ssh_server
from sftp_repo import make_disk

from vmclient.admin import keys as admin_keys
from vmclient.admin import main as admin
from vmclient.errors import EXIT_CONFIG


@pytest.fixture(scope="module")
def hsm() -> Iterator[SoftHSM]:
    with softhsm() as token:
        yield token


def test_the_signing_key_on_a_token_signs_and_never_leaves_it(
        hsm: SoftHSM, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    public = hsm.ed25519("admin")
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    (key_dir / "admin.pkcs11").write_text(f'module = "{hsm.module}"\ntoken = "{TOKEN}"\n'
                                          'key = "admin"\n')
    argv = ["--repo", str(tmp_path / "repo"), "--key-dir", str(key_dir)]
    monkeypatch.setenv("VMCLIENT_ADMIN_PIN", "0000")
    assert admin.main([*argv, "init"]) == EXIT_CONFIG
    assert f"wrong PIN for the token {TOKEN!r}" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "config").exists()
    monkeypatch.setenv("VMCLIENT_ADMIN_PIN", PIN)
    assert admin.main([*argv, "init"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"admin public key (pin on every laptop): {base64.b64encode(public).decode()}" in out
    assert not (key_dir / "admin.pem").exists()  # the escrow key alone is a file, encrypted
    assert admin_keys.is_encrypted(key_dir)
    image = make_disk(tmp_path / "disk.raw", 2)
    assert admin.main([*argv, "publish", "office", str(image)]) == 0, capsys.readouterr().err
    assert admin.main([*argv, "list"]) == 0, capsys.readouterr().err  # verifies the catalog
    assert "office" in capsys.readouterr().out
    k = admin_keys.load(key_dir)
    with pytest.raises(Exception, match="cannot be exported"):
        k.admin.private_bytes_raw()
    (key_dir / "escrow.pem").rename(tmp_path / "escrow-offline.pem")  # lost: never remade
    assert admin.main(["--repo", str(tmp_path / "repo2"), "--key-dir", str(key_dir),
                       "init"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{key_dir / 'escrow.pem'}: (file): missing" in err, err
    assert not (key_dir / "escrow.pem").exists()


def test_an_ssh_key_on_a_token_logs_in_through_the_agent(
        hsm: SoftHSM, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("VMCLIENT_REPOSITORY", raising=False)
    hsm.ecdsa("ssh", b"\x02")
    askpass = tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\necho {PIN}\n")
    askpass.chmod(0o700)
    with ssh_server() as server, ssh_agent(hsm.env) as sock:
        token_keys = hsm.ssh_public_keys()
        assert token_keys, "ssh-keygen -D found no key on the token"
        (server.keys / "root").write_text("\n".join(token_keys) + "\n")  # the token's only
        (home / ".ssh" / "known_hosts").write_bytes(server.known_hosts.read_bytes())
        ssh_add(sock, "-s", hsm.module, env={"SSH_ASKPASS": str(askpass),
                                             "SSH_ASKPASS_REQUIRE": "force"})
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        argv = ["--repo", f"sftp://root@127.0.0.1:{server.port}{server.repo}", "--key-dir",
                str(tmp_path / "keys")]
        assert admin.main([*argv, "init"]) == 0, capsys.readouterr().err
        assert (server.repo / "config").exists()
