"""The admin's CLI as a new admin meets it: `vmclient-admin` main() in-process against a
local-directory repository — where the repository comes from, errors that say what to do,
the exit-code table, --version, --quiet, human sizes and UTC."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sftp_repo import make_disk

from vmclient.admin import keys as admin_keys
from vmclient.admin import main as admin
from vmclient.admin.text import human_size
from vmclient.errors import EXIT_BUG, EXIT_USAGE
from vmclient.store import crypto, layout

MiB = 1 << 20


class Admin:
    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.repo, self.key_dir, self.tmp, self.capsys = tmp / "repo", tmp / "keys", tmp, capsys

    def __call__(self, *argv: str, key_dir: Path | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = admin.main(["--repo", str(self.repo), "--key-dir", str(key_dir or self.key_dir),
                         *argv])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def disk(self, name: str = "disk.raw", mib: int = 4, seed: int = 1) -> Path:
        return make_disk(self.tmp / name, mib, seed=seed)


@pytest.fixture
def adm(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Iterator[Admin]:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))  # no admin.toml of the host
    monkeypatch.delenv("VMCLIENT_REPOSITORY", raising=False)
    a = Admin(tmp_path, capsys)
    assert a("init")[0] == 0
    yield a


def test_a_usage_error_exits_64_and_a_bug_70_never_2(
        adm: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exc:
        admin.main(["--repo", str(adm.repo), "no-such-command"])
    assert exc.value.code == EXIT_USAGE == 64
    assert "invalid choice" in adm.capsys.readouterr().err

    async def broken(args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(admin, "run", broken)
    rc, _out, err = adm("list")
    assert rc == EXIT_BUG == 70 and "a bug" in err and "RuntimeError: boom" in err


def test_version_needs_no_repository(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        admin.main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"vmclient-admin \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_the_repository_comes_from_the_environment_or_the_config_file(
        adm: Admin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["--key-dir", str(adm.key_dir), "list"]) == 64
    assert "give --repo, set VMCLIENT_REPOSITORY" in capsys.readouterr().err
    monkeypatch.setenv("VMCLIENT_REPOSITORY", str(adm.repo))
    assert admin.main(["--key-dir", str(adm.key_dir), "list"]) == 0
    assert "catalog serial 1" in capsys.readouterr().out
    monkeypatch.delenv("VMCLIENT_REPOSITORY")
    conf = tmp_path / "xdg" / "vmclient" / "admin.toml"
    conf.parent.mkdir(parents=True)
    conf.write_text(f'repo = "{adm.repo}"\nkey_dir = "{adm.key_dir}"\n')
    assert admin.main(["list"]) == 0
    assert "catalog serial 1" in capsys.readouterr().out
    conf.write_text('repository = "/x"\n')
    assert admin.main(["list"]) == 78
    assert "admin.toml: repository: unknown setting" in capsys.readouterr().err


def test_a_missing_repository_says_run_init(adm: Admin) -> None:
    adm.repo = adm.tmp / "elsewhere"
    rc, _out, err = adm("list")
    assert rc == 66 and "run `vmclient-admin init`" in err, err
    assert not adm.repo.exists()


def test_a_wrong_key_dir_names_both_admin_keys(adm: Admin) -> None:
    other = adm.tmp / "other-keys"
    admin_keys.create(other)
    rc, _out, err = adm("list", key_dir=other)
    mine = crypto.key_id(admin_keys.load(adm.key_dir).admin.public_key())
    theirs = crypto.key_id(admin_keys.load(other).admin.public_key())
    assert rc == 78, err
    assert f"this repository belongs to admin key {mine}; --key-dir {other} holds admin key " \
        f"{theirs}" in err
    assert "not what was written" not in err
    rc, _out, err = adm("devices", key_dir=other)  # the fleet commands check it too
    assert rc == 78 and "belongs to admin key" in err


def test_a_missing_recipe_file_is_no_such_file_and_writes_nothing(adm: Admin) -> None:
    assert adm("publish", "office", str(adm.disk()))[0] == 0
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVmRoSDy8HnTMgOc3hr+eXi0V3ulmOlfnDHLI7y0tLG x"
    rc, _out, err = adm("enrol", "laptop-1", "--pubkey", admin.b64(crypto.raw_public(
        signing.public_key())), "--wrapping-key", admin.b64(crypto.raw_public(
            wrapping.public_key())), "--ssh-key-pub", ssh, "--server-keys", str(adm.tmp / "k"))
    assert rc == 0, err
    before = sorted(p.relative_to(adm.repo) for p in adm.repo.rglob("*"))
    rc, _out, err = adm("assign", "office", "laptop-1", "--recipe", str(adm.tmp / "nope.toml"))
    assert rc == 64 and "no such file" in err, err
    assert sorted(p.relative_to(adm.repo) for p in adm.repo.rglob("*")) == before


def test_a_rolled_back_repository_is_named_and_accepted_only_explicitly(adm: Admin) -> None:
    assert adm("publish", "office", str(adm.disk()))[0] == 0
    old = (adm.repo / layout.CATALOG).read_bytes()  # serial 2: office v1
    assert adm("publish", "office", str(adm.disk("v2.raw", seed=2)))[0] == 0  # serial 3
    (adm.repo / layout.CATALOG).write_bytes(old)  # the server restored from a backup
    rc, _out, err = adm("list")
    assert rc == 65 and "serial 2" in err and "already signed serial 3" in err, err
    assert "--accept-rollback" in err
    rc, _out, err = adm("--accept-rollback", "list")
    assert rc == 0 and "re-signed as serial 4" in err, err
    rc, out, _err = adm("list")
    assert rc == 0 and "catalog serial 4" in out and " v2 " not in out, out
    rc, out, _err = adm("publish", "office", str(adm.disk("v3.raw", seed=3)))
    assert rc == 0 and "version 2" in out and "catalog serial 5" in out, out


def test_a_deleted_escrow_copy_is_refused_not_replaced_by_a_new_key(adm: Admin) -> None:
    assert adm("publish", "office", str(adm.disk()))[0] == 0
    escrow = crypto.key_id(admin_keys.load(adm.key_dir).escrow.public_key())
    copy = adm.repo / layout.image_key("office", escrow)
    copy.unlink()
    rc, _out, err = adm("publish", "office", str(adm.disk("v2.raw", seed=2)))
    assert rc == 65 and "escrow copy" in err and "restore this file" in err, err
    assert not copy.exists()
    rc, out, _err = adm("list")
    assert " v2 " not in out


def test_publish_refuses_what_is_not_a_disk_image(adm: Admin) -> None:
    text = adm.tmp / "notes.txt"
    text.write_text("not a disk\n")
    rc, _out, err = adm("publish", "office", str(text))
    assert rc == 64 and "not a disk image" in err, err
    assert not (adm.repo / layout.image_dir("office")).exists()


def test_sizes_are_human_and_times_utc(adm: Admin) -> None:
    assert human_size(61440 * MiB) == "60.0 GiB"
    assert human_size(512) == "512 B" and human_size(1536 * MiB) == "1.5 GiB"
    rc, out, _err = adm("publish", "office", str(adm.disk()))
    assert rc == 0 and "4.0 MiB disk" in out, out
    rc, out, _err = adm("list")
    assert re.search(r"office\s+v1\s+4\.0 MiB\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC", out), out
    assert re.search(r"issued \d{4}-\d\d-\d\d \d\d:\d\d UTC", out), out


def test_quiet_publishes_without_a_word(adm: Admin) -> None:
    rc, out, err = adm("--quiet", "publish", "office", str(adm.disk()))
    assert rc == 0 and out == "" and err == "", (out, err)
    rc, out, _err = adm("-q", "list")
    assert rc == 0 and "office" in out  # a listing is the result: still printed


def test_init_says_to_put_the_escrow_key_offline(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert admin.main(["--repo", str(tmp_path / "r"), "--key-dir", str(tmp_path / "k"),
                       "init"]) == 0
    out = capsys.readouterr().out
    assert "no VM can be restored without the escrow key" in out and "offline" in out
    shutil.rmtree(tmp_path / "r")


def _enrol(adm: Admin, name: str) -> crypto.X25519PrivateKey:
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDVmRoSDy8HnTMgOc3hr+eXi0V3ulmOlfnDHLI7y0tLG x"
    rc, _out, err = adm("enrol", name, "--pubkey", admin.b64(crypto.raw_public(
        signing.public_key())), "--wrapping-key", admin.b64(crypto.raw_public(
            wrapping.public_key())), "--ssh-key-pub", ssh, "--server-keys", str(adm.tmp / "k"))
    assert rc == 0, err
    return wrapping


def test_show_an_image_lists_its_versions_and_who_can_read_it(adm: Admin) -> None:
    rc, out, _err = adm("publish", "office", str(adm.disk()), "--json")
    assert rc == 0
    assert json.loads(out) == {"image": "office", "version": 1, "size": 4 * MiB, "serial": 2,
                               "new_chunks": json.loads(out)["new_chunks"],
                               "packs": json.loads(out)["packs"],
                               "uploaded": json.loads(out)["uploaded"], "damaged": 0}
    wrapping = _enrol(adm, "laptop-1")
    _enrol(adm, "laptop-2")
    assert adm("assign", "office", "laptop-1")[0] == 0
    rc, out, _err = adm("show", "office")
    assert rc == 0 and re.search(r"v1\s+4\.0 MiB\s+published \S+ \S+ UTC", out), out
    assert "the escrow key (the admin)" in out and "laptop-1 (" in out
    assert "laptop-2" not in out
    rc, out, _err = adm("show", "office", "--json")
    doc = json.loads(out)
    assert [v["version"] for v in doc["versions"]] == [1]
    ids = {r["key"]: r["name"] for r in doc["readers"]}
    assert ids[crypto.key_id(wrapping.public_key())] == "laptop-1" and len(ids) == 2
    rc, out, _err = adm("show", "laptop-1", "--json")
    assert rc == 0 and json.loads(out)["images"] == ["office"]
    rc, _out, err = adm("show", "nothing")
    assert rc == 64 and "neither an image" in err


def test_list_json(adm: Admin) -> None:
    assert adm("publish", "office", str(adm.disk()))[0] == 0
    _enrol(adm, "laptop-1")
    rc, out, _err = adm("list", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["serial"] == 2
    assert [(i["name"], i["version"], i["size"]) for i in doc["images"]] == [
        ("office", 1, 4 * MiB)]
    assert [d["name"] for d in doc["devices"]] == ["laptop-1"]


def test_revoke_dry_run_changes_nothing(adm: Admin) -> None:
    _enrol(adm, "laptop-1")
    keys_dir = adm.tmp / "k"
    before = sorted(p.relative_to(adm.tmp) for p in adm.tmp.rglob("*"))
    rc, out, err = adm("devices", "revoke", "laptop-1", "--force", "--dry-run",
                       "--server-keys", str(keys_dir))
    assert rc == 0 and "dry run: would revoke laptop-1" in out, err
    assert sorted(p.relative_to(adm.tmp) for p in adm.tmp.rglob("*")) == before
    rc, out, err = adm("devices", "revoke", "laptop-1", "--force", "--server-keys",
                       str(keys_dir))
    assert rc == 0 and "revoked" in out, err
    rc, out, _err = adm("devices")
    assert "revoked" in out


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_check_verifies_what_the_catalog_reaches_and_read_data_every_chunk(adm: Admin) -> None:
    assert adm("publish", "office", str(adm.disk(mib=8)))[0] == 0
    rc, out, err = adm("check", "--read-data")
    assert rc == 0 and "no problems found" in out and "read and authenticated" in out, err
    packs = sorted((adm.repo / layout.image_store("office") / "packs").rglob("*"),
                   key=lambda p: p.stat().st_size if p.is_file() else 0)
    pack = packs[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside a blob: the index still matches the pack's size
    pack.write_bytes(bytes(data))
    before = _tree(adm.repo)
    rc, out, _err = adm("check")
    assert rc == 0, out  # without --read-data the blobs are not read
    rc, out, err = adm("check", "--read-data")
    assert rc == 65 and "PROBLEM: image office: chunk" in out and "1 problem" in err, (out, err)
    assert _tree(adm.repo) == before  # check writes nothing
    (adm.repo / layout.image_manifest("office", 1)).unlink()
    rc, out, err = adm("check", "--json")
    assert rc == 65 and any("v1" in p for p in json.loads(out)["problems"]), out


def test_forget_prune_and_unpublish(adm: Admin, tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        rc, _out, err = adm("publish", "office", str(adm.disk(f"v{seed}.raw", mib=4,
                                                              seed=seed)))
        assert rc == 0, err
    store = adm.repo / layout.image_store("office")

    def size() -> int:
        return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())

    full = size()
    before = _tree(adm.repo)
    assert adm("forget", "office", "--keep-last", "1", "--dry-run")[0] == 0
    assert adm("prune", "office", "--dry-run")[0] == 0
    assert _tree(adm.repo) == before
    rc, out, err = adm("forget", "office", "--keep-last", "1")
    assert rc == 0 and "version(s) 1, 2 out of the catalog (serial 5)" in out, err
    rc, out, _err = adm("list")
    assert " v3 " in out and " v1 " not in out and " v2 " not in out, out
    assert (adm.repo / layout.image_manifest("office", 1)).exists()  # until prune
    rc, out, err = adm("prune", "office")
    assert rc == 0 and "deleted manifest(s) of version(s) 1, 2" in out, err
    assert not (adm.repo / layout.image_manifest("office", 1)).exists()
    assert size() < full * 0.6, (size(), full)
    rc, out, err = adm("check", "--read-data")
    assert rc == 0 and "no problems found" in out, (out, err)

    from vmclient.admin.images import read_published
    from vmclient.transport.localfs import LocalDirStore
    k = admin_keys.load(adm.key_dir)
    got = tmp_path / "got.raw"
    asyncio.run(read_published(LocalDirStore(adm.repo), k.admin.public_key(), k.escrow,
                               "office", got))
    assert got.read_bytes() == (tmp_path / "v3.raw").read_bytes()

    rc, out, err = adm("unpublish", "office", "7")
    assert rc == 64 and "no version(s) 7" in err
    before = _tree(adm.repo)
    rc, out, err = adm("unpublish", "office", "--dry-run")
    assert rc == 0 and "3" in out and _tree(adm.repo) == before, (out, err)
    rc, out, err = adm("unpublish", "office")
    assert rc == 0 and "took office version(s) 3" in out, err
    assert adm("prune", "office")[0] == 0
    assert not [p for p in (adm.repo / layout.image_dir("office")).rglob("*") if p.is_file()]
    rc, out, err = adm("publish", "office", str(adm.disk("v4.raw", seed=4)))
    assert rc == 0 and "version 1" in out, err


def test_the_admin_keys_are_encrypted_at_rest_under_the_passphrase(
        adm: Admin, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    for name in (admin_keys.ADMIN_KEY, admin_keys.ESCROW_KEY):
        data = (adm.key_dir / name).read_bytes()
        assert data.startswith(b"vmclient-admin-key: scrypt n=32768 r=8 p=1 salt=")
        assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
        with pytest.raises(TypeError, match="encrypted"):  # no key without the passphrase
            serialization.load_pem_private_key(data, password=None)
    assert adm("list")[0] == 0  # the passphrase from VMCLIENT_ADMIN_PASSPHRASE
    monkeypatch.setenv("VMCLIENT_ADMIN_PASSPHRASE", "not the passphrase")
    rc, _out, err = adm("list")
    assert rc == 78 and "wrong passphrase" in err, err
    monkeypatch.delenv("VMCLIENT_ADMIN_PASSPHRASE")
    rc, _out, err = adm("list")
    assert rc == 64 and "--passphrase-file" in err, err
    secret = tmp_path / "pass"
    secret.write_text("integration-test passphrase\n")
    rc, _out, err = adm("--passphrase-file", str(secret), "list")
    assert rc == 0, err


def test_init_without_a_passphrase_is_refused_unless_asked_and_plain_keys_warn(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMCLIENT_ADMIN_PASSPHRASE")
    a = Admin(tmp_path, capsys)
    rc, _out, err = a("init")
    assert rc == 64 and "--no-passphrase" in err, err
    assert not a.key_dir.exists() and not (a.repo / "config").exists()
    rc, _out, err = a("init", "--no-passphrase")
    assert rc == 0, err
    rc, _out, err = a("list")
    assert rc == 0 and "not encrypted" in err and "protect-keys" in err, err
    monkeypatch.setenv("VMCLIENT_ADMIN_PASSPHRASE", "a new passphrase")
    rc, out, err = a("protect-keys")
    assert rc == 0 and "encrypted under the passphrase" in out, err
    assert admin_keys.is_encrypted(a.key_dir)
    rc, _out, err = a("list")
    assert rc == 0 and "not encrypted" not in err, err
    rc, _out, err = a("protect-keys")
    assert rc == 64 and "encrypted already" in err


def test_the_qcow2_conversion_shows_progress_and_a_small_tmpdir_is_warned_of(
        adm: Admin, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil as shutil_mod
    from collections import namedtuple

    from sftp_repo import qcow2

    from vmclient.admin import images
    image = qcow2(adm.disk(mib=8))
    rc, _out, err = adm("publish", "office", str(image), "--tmpdir", str(adm.tmp))
    assert rc == 0, err
    assert "publish office: converting to raw 100% of 8.0 MiB" in err, err
    assert "free" not in err  # room enough: no warning
    usage = namedtuple("usage", "total used free")
    real = shutil_mod.disk_usage
    monkeypatch.setattr(images.shutil, "disk_usage",
                        lambda p: usage(real(p).total, real(p).used, 2 * MiB)
                        if str(p).startswith(str(adm.tmp)) else real(p))
    rc, _out, err = adm("publish", "office", str(image), "--tmpdir", str(adm.tmp))
    assert rc == 0, err  # the real file system had room: the warning was only a warning
    assert f"{adm.tmp} has 2.0 MiB free" in err and "--tmpdir" in err, err


def test_an_sftp_repository_finds_the_ssh_key_and_known_hosts_as_openssh_would(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fixtures_sshd import ssh_server
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    with ssh_server() as server:
        url = f"sftp://root@127.0.0.1:{server.port}{server.repo}"
        argv = ["--repo", url, "--key-dir", str(tmp_path / "keys")]
        assert admin.main([*argv, "init"]) == 64  # nothing to go by
        assert "known_hosts file" in capsys.readouterr().err
        (home / ".ssh" / "config").write_text(
            f"Host 127.0.0.1\n    IdentityFile {server.admin.key_file}\n"
            f"    UserKnownHostsFile {server.known_hosts}\n")
        assert admin.main([*argv, "init"]) == 0, capsys.readouterr().err
        assert (server.repo / "config").exists()
        (home / ".ssh" / "config").unlink()  # the OpenSSH default names
        (home / ".ssh" / "id_ed25519").write_bytes(server.admin.key_file.read_bytes())
        (home / ".ssh" / "id_ed25519").chmod(0o600)
        (home / ".ssh" / "known_hosts").write_bytes(server.known_hosts.read_bytes())
        capsys.readouterr()
        assert admin.main([*argv, "list"]) == 0, capsys.readouterr().err


def test_an_sftp_url_may_name_an_ssh_config_alias_resolved_as_openssh_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``sftp://dc/…`` with ``Host dc`` in a file ~/.ssh/config includes (paramiko's
    SSHConfig has no Include; ``ssh -G`` resolves it as a connection would)."""
    from fixtures_sshd import ssh_server
    home = tmp_path / "home"
    (home / ".ssh" / "config.d").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    with ssh_server() as server:
        (home / ".ssh" / "config").write_text(f"Include {home}/.ssh/config.d/*\n")
        alias = home / ".ssh" / "config.d" / "datacenter"
        block = (f"Host dc\n    HostName 127.0.0.1\n    Port {server.port}\n    User root\n"
                 f"    UserKnownHostsFile {server.known_hosts}\n")
        alias.write_text(block + f"    IdentityFile {tmp_path / 'no-such-key'}\n")
        argv = ["--repo", f"sftp://dc{server.repo}", "--key-dir", str(tmp_path / "keys")]
        assert admin.main([*argv, "init"]) == 64
        err = capsys.readouterr().err
        assert str(tmp_path / "no-such-key") in err and "ssh-agent" in err, err
        assert not (server.repo / "config").exists()
        alias.write_text(block + f"    IdentityFile {server.admin.key_file}\n")
        assert admin.main([*argv, "init"]) == 0, capsys.readouterr().err
        assert (server.repo / "config").exists()
        rc = admin.main([*argv, "list", "--json"])
        assert rc == 0, capsys.readouterr().err
