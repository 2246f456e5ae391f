"""`enrol --accept` writes the storage server's root script to a file, not into its output,
and names the sshd settings that are server-wide."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from testlib import run
from vmclient.admin import fleet, keys, serverscript
from vmclient.admin.sshd import confinement
from vmclient.errors import UsageError
from vmclient.manage import enrol
from vmclient.store import crypto, layout
from vmclient.store.documents import CONFIG_ID, RepoConfig
from vmclient.store.remote import MemoryStore
from vmclient.store.repo import put_signed

T = 1_700_000_000
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVmRoSDy8HnTMgOc3hr+eXi0V3ulmOlfnDHLI7y0tLG dev"


async def _repo_with_request(k: keys.AdminKeys, name: str) -> tuple[MemoryStore, str]:
    remote = MemoryStore()
    cfg = RepoConfig(repository="0" * 32, created=T, chunk_size=64 << 10,
                     admin_key=crypto.raw_public(k.admin.public_key()),
                     escrow_key=crypto.raw_public(k.escrow.public_key()))
    await put_signed(remote, layout.CONFIG, k.admin, ("config", CONFIG_ID),
                     cfg.to_bytes())
    code = enrol.CodeBook(k.dir / fleet.CODES).issue(name, T, 7 * 86400)
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    device = crypto.key_id(signing.public_key())
    req = enrol.EnrolmentRequest(device, name, crypto.raw_public(signing.public_key()),
                                 crypto.raw_public(wrapping.public_key()), T,
                                 ssh_key=SSH).with_proof(code)
    await put_signed(remote, enrol.request_path(device), signing, ("enrolment", device),
                     req.to_bytes(), exclusive=False)
    return remote, device


async def _accept(k: keys.AdminKeys, remote: MemoryStore, script: str | None) -> None:
    args = argparse.Namespace(code=None, accept=True, dropbox=None, key_dir=k.dir,
                              server_repo="/srv/repo", repo="/srv/repo",
                              server_keys="/etc/ssh/vmc", server_script=script)
    await fleet.cmd_enrol_code(args, remote)


@pytest.mark.asyncio
async def test_accept_writes_the_root_script_to_a_file_and_names_the_server_wide_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("time.time", lambda: T + 60)
    k = keys.create(tmp_path / "admin")
    remote, device = await _repo_with_request(k, "laptop-1")
    await _accept(k, remote, None)
    out = capsys.readouterr().out
    assert f"enrolled laptop-1 as device {device}" in out
    for root_only in ("useradd", "Match User", "install -d", "restrict ssh-ed25519", "set -e"):
        assert root_only not in out, out
    (script,) = (k.dir / serverscript.SETUP_DIR).iterdir()
    assert f"written to {script}" in out
    assert "Server-wide sshd settings it does not apply" in out
    assert "Subsystem sftp internal-sftp; PasswordAuthentication no" in out
    assert script.stat().st_mode & 0o777 == 0o600
    text = script.read_text()
    conf = confinement(device, SSH, "/srv/repo", "/etc/ssh/vmc")
    assert conf.match_block in text and conf.authorized_keys in text
    assert "#     PasswordAuthentication no" in text  # listed, commented: not applied
    assert "\nPasswordAuthentication" not in text
    r = run(["sh", "-n", script])
    assert r.returncode == 0, r.stderr


def test_the_script_appends_each_match_block_once_and_sets_up_the_account(
        tmp_path: Path) -> None:
    """The script run against a scratch sshd_config, its root commands stubbed by PATH."""
    device = "ab" * 16
    conf = confinement(device, SSH, str(tmp_path / "repo"), str(tmp_path / "keys"))
    script = tmp_path / "s.sh"
    script.write_text(serverscript.render([(device, conf)], T))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("useradd", "usermod", "install", "chmod"):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho {tool} "$@" >> {log}\n')
        (bin_dir / tool).chmod(0o755)
    (tmp_path / "keys").mkdir()
    sshd_config = tmp_path / "sshd_config"
    sshd_config.write_text("Port 22\n")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SSHD_CONFIG": str(sshd_config)}
    for _ in range(2):
        run(["sh", script], check=True, env=env)
    assert sshd_config.read_text() == "Port 22\n" + conf.match_block  # once, not twice
    assert "useradd --system --user-group" in log.read_text()
    assert (tmp_path / "keys" / conf.account).read_text() == conf.authorized_keys + "\n"


@pytest.mark.asyncio
async def test_an_existing_server_script_is_refused_before_anything_is_enrolled(
        tmp_path: Path) -> None:
    k = keys.create(tmp_path / "admin")
    remote, device = await _repo_with_request(k, "laptop-2")
    taken = tmp_path / "taken.sh"
    taken.write_text("keep me\n")
    with pytest.raises(UsageError, match="exists"):
        await _accept(k, remote, str(taken))
    assert taken.read_text() == "keep me\n"
    assert await remote.list(layout.device_dir(device)) == []  # not enrolled
