"""The data partition's recovery key, escrowed to IT at enrolment: the real
systemd-cryptenroll adds it to a LUKS2 volume (an image file made by the real cryptsetup),
the laptop uploads it wrapped for the escrow key, ``vmclient-admin recovery-key`` gives it
back, and cryptsetup accepts it.  Nothing of it lies in the repository in clear.

The laptop's volume is unlocked by its TPM2; here systemd-cryptenroll unlocks the file by a
passphrase (``vmclientctl recovery-key --unlock password``, ``$PASSWORD``)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from testlib import ROOT, need
from vmclient.admin import keys as admin_keys
from vmclient.admin.main import main as admin_main
from vmclient.host.inventory import ManageConfig
from vmclient.manage.agent import Agent
from vmclient.manage.enrol import CodeBook, process_requests
from vmclient.manage.recovery import ESCROW_PUB, KEY_RE, PENDING, SENT, object_path, parse_key
from vmclient.store import crypto
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import Hypervisor

pytestmark = pytest.mark.integration

PASSPHRASE = "the installer's passphrase"
NOW = 1_764_000_000


def luks_volume(path: Path) -> Path:
    """A 32 MiB LUKS2 image file with one passphrase keyslot (PBKDF2, fast)."""
    subprocess.run(["truncate", "-s", "32M", str(path)], check=True)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                    "--key-file=-", str(path)], input=PASSPHRASE.encode(), check=True,
                   capture_output=True, timeout=120)
    return path


def opens(volume: Path, key: str) -> bool:
    r = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(volume)],
                       input=key.encode(), capture_output=True, timeout=120)
    return r.returncode == 0


def keyslots(volume: Path) -> list[str]:
    out = subprocess.run(["cryptsetup", "luksDump", "--dump-json-metadata", str(volume)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return sorted(json.loads(out)["keyslots"])


def vmclientctl_recovery_key(agent: Agent, volume: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python-services" / "src"),
           "PASSWORD": PASSPHRASE}
    return subprocess.run(
        [sys.executable, "-m", "vmclient.cli.main", "recovery-key", "--volume", str(volume),
         "--unlock", "password", "--state-dir", str(agent.cfg.state_dir),
         "--device-dir", str(agent.cfg.device_keys_dir)],
        env=env, capture_output=True, text=True, timeout=300)


def test_recovery_key_is_escrowed_at_enrolment_and_only_it_reaches_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    need(shutil.which("cryptsetup") is not None, "cryptsetup is not installed (cryptsetup-bin)")
    need(shutil.which("systemd-cryptenroll") is not None, "systemd-cryptenroll is not installed")
    repo, key_dir = tmp_path / "repo", tmp_path / "admin-keys"
    admin = ["--repo", str(repo), "--key-dir", str(key_dir)]
    assert admin_main([*admin, "init"]) == 0
    k = admin_keys.load(key_dir)
    volume = luks_volume(tmp_path / "vmdata.img")
    cfg = ManageConfig(state_dir=tmp_path / "manage", vm_keys_dir=tmp_path / "vmkeys",
                       images_dir=tmp_path / "images", name_prefix="vmct-none-")
    # the hypervisor is never connected: enrolment does not touch VMs
    laptop = Agent(cfg, LocalDirStore(repo), Hypervisor("qemu:///system"), wall=lambda: NOW)

    # before enrolment there is no escrow key: nothing is made
    r = vmclientctl_recovery_key(laptop, volume)
    assert r.returncode == 0 and "not enrolled yet" in r.stdout, r
    book = CodeBook(tmp_path / "codes.json")
    code = book.issue("laptop-42", NOW)
    device = asyncio.run(laptop.request_enrolment(crypto.raw_public(k.admin.public_key()),
                                                  "laptop-42", code))
    asyncio.run(process_requests(LocalDirStore(repo), k.admin, book, NOW))
    assert asyncio.run(laptop.complete_enrolment())
    # the enrolment recorded the escrow key from the admin-signed config
    assert (cfg.state_dir / ESCROW_PUB).read_bytes() == crypto.raw_public(k.escrow.public_key())

    slots_before = keyslots(volume)
    r = vmclientctl_recovery_key(laptop, volume)
    assert r.returncode == 0, r.stderr
    assert "new recovery key" in r.stdout and not KEY_RE.search(r.stdout + r.stderr), r
    assert len(keyslots(volume)) == len(slots_before) + 1
    pending = cfg.device_keys_dir / PENDING
    assert pending.stat().st_mode & 0o777 == 0o600
    assert not KEY_RE.search(pending.read_bytes().decode("latin-1"))

    # the agent's next poll uploads it; then it is sent, not pending
    asyncio.run(laptop.poll())
    assert not pending.exists() and (cfg.device_keys_dir / SENT).exists()
    assert (repo / object_path(device)).read_bytes() == (cfg.device_keys_dir / SENT).read_bytes()

    # IT, with the escrow key: the key that opens the volume
    capsys.readouterr()
    assert admin_main([*admin, "recovery-key", "laptop-42", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    key = shown["recovery_key"]
    assert shown["device"] == device and shown["keyslot"] >= 0 and KEY_RE.fullmatch(key)
    assert opens(volume, key) and not opens(volume, key[:-1] + ("c" if key[-1] != "c" else "b"))
    secret = parse_key(key)
    for f in repo.rglob("*"):
        if f.is_file():
            assert key.encode() not in f.read_bytes() and secret not in f.read_bytes(), f

    # run again (every boot): nothing new
    r = vmclientctl_recovery_key(laptop, volume)
    assert r.returncode == 0 and "up to date" in r.stdout, r
    assert len(keyslots(volume)) == len(slots_before) + 1

    # IT's escrow key changes: a new recovery key replaces the old one, which no longer opens
    new_escrow = crypto.X25519PrivateKey.generate()
    (cfg.state_dir / ESCROW_PUB).write_bytes(crypto.raw_public(new_escrow.public_key()))
    r = vmclientctl_recovery_key(laptop, volume)
    assert r.returncode == 0 and "new recovery key" in r.stdout, r
    assert len(keyslots(volume)) == len(slots_before) + 1
    assert not opens(volume, key)
    asyncio.run(laptop.poll())
    escrow_file = tmp_path / "new-escrow.pem"
    escrow_file.write_bytes(new_escrow.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    assert admin_main([*admin, "recovery-key", device, "--json",
                       "--escrow-key", str(escrow_file)]) == 0
    assert opens(volume, json.loads(capsys.readouterr().out)["recovery_key"])
    # the old escrow key no longer reads it
    assert admin_main([*admin, "recovery-key", device]) != 0
    assert "wrapped for escrow key" in capsys.readouterr().err


def enrolled(tmp_path: Path, name: str, **cfg_kw: Any) -> tuple[list[str], Agent, str]:
    """A repository (``vmclient-admin`` arguments), a laptop enrolled in it, its id."""
    repo, key_dir = tmp_path / "repo", tmp_path / "admin-keys"
    admin = ["--repo", str(repo), "--key-dir", str(key_dir)]
    assert admin_main([*admin, "init"]) == 0
    k = admin_keys.load(key_dir)
    cfg = ManageConfig(state_dir=tmp_path / "manage", vm_keys_dir=tmp_path / "vmkeys",
                       images_dir=tmp_path / "images", name_prefix="vmct-none-", **cfg_kw)
    laptop = Agent(cfg, LocalDirStore(repo), Hypervisor("qemu:///system"), wall=lambda: NOW)
    book = CodeBook(tmp_path / "codes.json")
    device = asyncio.run(laptop.request_enrolment(crypto.raw_public(k.admin.public_key()),
                                                  name, book.issue(name, NOW)))
    asyncio.run(process_requests(LocalDirStore(repo), k.admin, book, NOW))
    assert asyncio.run(laptop.complete_enrolment())
    return admin, laptop, device


def test_admin_is_told_when_a_device_has_not_escrowed_a_key_and_when_its_key_was_used(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A use: the record the laptop's boot appends to (meta-vmclient's
    vmclient-data-recovery) goes up with the agent's next poll; ``devices`` and ``show``
    name when and which keyslot."""
    record = tmp_path / "recovery-key-used"
    admin, laptop, device = enrolled(tmp_path, "laptop-8", recovery_record=record)
    capsys.readouterr()
    assert admin_main([*admin, "recovery-key", device]) != 0
    assert "has not escrowed a recovery key" in capsys.readouterr().err

    asyncio.run(laptop.poll())  # never used: nothing said
    capsys.readouterr()
    assert admin_main([*admin, "devices"]) == 0
    assert "recovery key" not in capsys.readouterr().out
    record.write_text("2025-12-07T04:12:33Z recovery key used: keyslot 1; "
                      "sealed to this TPM2 again: yes\n")
    asyncio.run(laptop.poll())
    assert admin_main([*admin, "devices"]) == 0
    assert ("laptop-8: recovery key used 1 time, last 2025-12-07 04:12 UTC (keyslot 1, "
            "sealed to the TPM again)") in capsys.readouterr().out.splitlines()
    assert admin_main([*admin, "show", device, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recovery_key_used"] == [
        {"keyslot": 1, "resealed": True, "time": 1_765_080_753}]
