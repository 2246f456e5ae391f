"""The key gate's decisions, without libvirt: the lease read-only by trusted time, who is
refused and why, the data key unwrapped or refused naming the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.config import from_mapping
from vmclient.host.gate import GateConfig, KeySettings, StartRefused, data_key, refusal
from vmclient.host.inventory import VMTarget
from vmclient.host.keys import DeviceKeys
from vmclient.host.lease import DeviceState, Lease, StateFile, TimeRecord, read_lease
from vmclient.power import config as power_config
from vmclient.store import crypto

T = 1_764_000_000
DAY = 86400


def state(tmp: Path, **kw: object) -> StateFile:
    st = StateFile(tmp)
    st.save(DeviceState(**{"device": "d", "enrolled": True, "lease_until": T + DAY,  # type: ignore[arg-type]
                           "clock": TimeRecord(T, "boot-1", 100.0), **kw}))
    return st


def lease_at(tmp: Path, wall: float, mono: float = 100.0, boot: str = "boot-1") -> Lease:
    return read_lease(tmp, wall=lambda: wall, mono=lambda: mono, boot=lambda: boot)


def test_read_lease_judges_by_trusted_time_and_writes_nothing(tmp_path: Path) -> None:
    st = state(tmp_path)
    before = st.path.read_bytes()
    assert lease_at(tmp_path, T + 3600).business_allowed
    # the wall clock set back does not stop the monotonic clock within one boot
    late = lease_at(tmp_path, T - 30 * DAY, mono=100.0 + 2 * DAY)
    assert not late.business_allowed and "expired" in late.reason
    # across a reboot the recorded time is the floor, the wall clock may move it on
    assert lease_at(tmp_path, T - 30 * DAY, mono=5.0, boot="boot-2").business_allowed
    assert not lease_at(tmp_path, T + 2 * DAY, mono=5.0, boot="boot-2").business_allowed
    assert st.path.read_bytes() == before  # the agent is the only writer of state.json


@pytest.mark.parametrize(("changes", "journal", "reason"), [
    ({"enrolled": False}, False, "expired"),  # never enrolled: no lease at all
    ({"locked": True}, False, "locked"),
    ({"wiped": True}, False, "wiped"),
    ({}, True, "wiped"),  # a wipe under way (its journal exists)
])
def test_business_refused_when_not_enrolled_locked_or_wiped(
        tmp_path: Path, changes: dict[str, object], journal: bool, reason: str) -> None:
    state(tmp_path, **changes)
    if journal:
        (tmp_path / "wipe.json").write_text("{}")
    biz = VMTarget("biz", "u", "business", secrets=("s",))
    why = refusal(biz, lambda: lease_at(tmp_path, T))
    assert why is not None and reason in why
    assert refusal(VMTarget("priv", "u", "private"), lambda: lease_at(tmp_path, T)) is None


def test_no_management_state_refuses_business_but_not_private(tmp_path: Path) -> None:
    lease = read_lease(tmp_path / "absent")
    assert refusal(VMTarget("biz", "u", "business"), lambda: lease) is not None
    asked = []
    assert refusal(VMTarget("p", "u", "private"), lambda: asked.append(1) or lease) is None
    assert asked == []  # a private VM never consults the lease


def test_data_key_unwraps_or_refuses_naming_the_file(tmp_path: Path) -> None:
    keys = DeviceKeys(tmp_path / "device")
    cfg = GateConfig(tmp_path / "device", tmp_path / "vmkeys", tmp_path / "manage")
    with pytest.raises(StartRefused, match=r"'vm1' may not start: no data key at .*vm1.wrapped"):
        data_key(cfg, keys, "vm1")
    secret = crypto.KeySet.generate()
    cfg.vm_keys_dir.mkdir()
    path = cfg.vm_keys_dir / "vm1.wrapped"
    path.write_bytes(b"x" * 10)
    path.chmod(0o600)  # root-only, as every private file must be
    with pytest.raises(StartRefused, match="no device key"):
        data_key(cfg, keys, "vm1")
    keys.ensure()
    path.write_bytes(crypto.wrap_key(keys.wrapping().public_key(), secret.secret, "data-key",
                                     "vm:vm1"))
    assert data_key(cfg, keys, "vm1").luks == secret.luks
    # another VM's key under this name, or one wrapped for another device: refused
    path.write_bytes(crypto.wrap_key(keys.wrapping().public_key(), secret.secret, "data-key",
                                     "vm:vm2"))
    with pytest.raises(StartRefused, match="does not open with this device's key") as info:
        data_key(cfg, keys, "vm1")
    assert info.value.vm == "vm1" and str(path) in info.value.reason


def test_powerd_keys_table_parses_and_errors_name_the_key(tmp_path: Path) -> None:
    cfg = from_mapping(power_config.PowerConfig, {"keys": {"manage_dir": "/x/m"}}, "p.toml")
    assert cfg.keys.gate() == GateConfig(KeySettings().device_dir, KeySettings().vm_keys_dir,
                                         Path("/x/m"))
    with pytest.raises(Exception, match=r"p.toml: keys.manage: unknown key"):
        from_mapping(power_config.PowerConfig, {"keys": {"manage": "/x"}}, "p.toml")
