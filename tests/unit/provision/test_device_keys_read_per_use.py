"""provd's and syncd's DeviceKeys read the key files at every use (issue 13 §2.5): a key the
wipe or a re-enrolment replaced is never used again by a daemon that loaded the old one."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.errors import VMClientError
from vmclient.host.inventory import ManageConfig
from vmclient.host.keys import DeviceKeys, VMKeys
from vmclient.manage.wipe import rotate_wrapping_key
from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError


def test_keys_replaced_under_a_loaded_devicekeys_are_the_ones_it_uses(tmp_path: Path) -> None:
    device = DeviceKeys.load_or_create(tmp_path / "device")  # what a daemon holds from start
    old_id, old_wrapping = device.device_id(), device.wrapping()
    vm_keys = VMKeys(tmp_path / "state", device)
    cfg = ManageConfig(tmp_path / "manage", tmp_path / "state" / "keys", tmp_path / "images",
                       device_dir=tmp_path / "device")
    rotate_wrapping_key(cfg, kept=[])  # the wipe
    files = DeviceKeys(tmp_path / "device")
    files.new_identity()  # the re-enrolment
    files.ensure()

    assert device.device_id() == crypto.key_id(files.signing().public_key()) != old_id
    assert device.wrapping_id() == crypto.key_id(files.wrapping().public_key())
    keys = vm_keys.create("vm1")
    assert vm_keys.load("vm1").secret == keys.secret
    with pytest.raises(RemoteIntegrityError):
        crypto.unwrap_key(old_wrapping, vm_keys.path("vm1").read_bytes(), "data-key", "vm:vm1")
    assert "device" in repr(device) and "PRIVATE" not in repr(device).upper()


def test_a_missing_key_is_an_error_at_use_not_a_stale_key(tmp_path: Path) -> None:
    device = DeviceKeys.load_or_create(tmp_path / "device")
    (tmp_path / "device" / "wrapping.key").unlink()  # mid-rotation, or shredded
    with pytest.raises(VMClientError, match=r"wrapping\.key"):
        device.wrapping()
