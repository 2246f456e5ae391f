"""Uses of the data partition's recovery key, reported to IT: the record the laptop's
boot writes, the heartbeat's ``recovery_key_used`` field, what IT's views show
(vmclient.manage.keyuse, .status, .fleetview, vmclient.admin.show)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmclient.admin.show import render_device
from vmclient.manage import fleetview, keyuse
from vmclient.manage.keyuse import MAX_SENT, UNREADABLE, KeyUse, parse_record, read_record
from vmclient.manage.status import DeviceStatus
from vmclient.store.errors import RemoteIntegrityError

DEVICE = "d" * 32
T = 1_765_080_753  # 2025-12-07T04:12:33Z
# what meta-vmclient's vmclient-data-recovery writes (tests/layer checks the script's line)
LINE = "2025-12-07T04:12:33Z recovery key used: keyslot 1; sealed to this TPM2 again: yes"


def test_the_record_names_when_which_keyslot_and_whether_sealed_again() -> None:
    assert parse_record(LINE + "\n") == [KeyUse(T, 1, True)]
    text = "\n".join([
        LINE,
        "",  # blank: no use
        # written before the keyslot was recorded, and when cryptsetup did not name it
        "2025-12-07T05:00:00Z recovery key used; sealed to this TPM2 again: no",
        "2025-12-07T05:00:00Z recovery key used: keyslot unknown; sealed to this TPM2 again: no",
    ])
    assert parse_record(text) == [KeyUse(T, 1, True), KeyUse(T + 2847, -1, False),
                                  KeyUse(T + 2847, -1, False)]


@pytest.mark.parametrize("line", [
    "garbage",
    LINE[:40],  # cut by a power loss
    LINE.replace("2025-12-07", "2025-13-45"),  # the shape of a date, not one
    LINE.replace("yes", "maybe"),
    LINE + "; rm -rf /",
])
def test_a_line_it_cannot_read_still_counts_as_a_use(line: str) -> None:
    assert parse_record(f"{LINE}\n{line}\n") == [KeyUse(T, 1, True), UNREADABLE]
    assert KeyUse(0, -1, False) == UNREADABLE
    # LUKS2 has 32 keyslots: another number is not one, the rest of the line stands
    assert parse_record(LINE.replace("keyslot 1", "keyslot 32")) == [KeyUse(T, -1, True)]


def test_the_record_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = tmp_path / "recovery-key-used"
    assert read_record(record) == []  # never used: no record
    record.write_text(f"{LINE}\nnonsense\n")
    assert read_record(record) == [KeyUse(T, 1, True), UNREADABLE]
    assert "1 line(s)" in caplog.text and str(record) in caplog.text
    # only its tail is read: the cut first line is not taken for an unreadable use
    many = (LINE + "\n") * (keyuse.MAX_READ // len(LINE) + 10)
    record.write_text(many)
    uses = read_record(record)
    assert uses and set(uses) == {KeyUse(T, 1, True)}
    assert keyuse.newest(uses) == (KeyUse(T, 1, True),) * MAX_SENT
    # a record that cannot be read may hide a use: one, at an unknown time
    record.unlink()
    record.mkdir()
    assert read_record(record) == [UNREADABLE]


def status(uses: tuple[KeyUse, ...] = ()) -> DeviceStatus:
    return DeviceStatus(DEVICE, T + 60, "vmclient 1.0", 3, T + 99, False, False, None, uses)


def test_the_heartbeat_carries_the_uses_and_reads_them_strictly() -> None:
    old = status()
    # a laptop whose key was never used sends what older laptops send
    assert b"recovery_key_used" not in old.to_bytes()
    assert DeviceStatus.parse(old.to_bytes(), DEVICE, "p") == old
    st = status((KeyUse(T, 1, True), UNREADABLE))
    doc = json.loads(st.to_bytes())
    assert doc["recovery_key_used"] == [{"keyslot": 1, "resealed": True, "time": T},
                                        {"keyslot": -1, "resealed": False, "time": 0}]
    assert DeviceStatus.parse(st.to_bytes(), DEVICE, "p") == st


@pytest.mark.parametrize("bad, problem", [
    ([], "0 entries"),
    ([{"keyslot": 1, "resealed": True, "time": T}] * (MAX_SENT + 1), "17 entries"),
    ([{"keyslot": 32, "resealed": True, "time": T}], "recovery_key_used[0].keyslot"),
    ([{"keyslot": 1, "resealed": "yes", "time": T}], "true or false"),
    ([{"keyslot": 1, "resealed": True, "time": -1}], "out of range"),
    ([{"keyslot": 1, "resealed": True, "time": T, "who": "x"}], "unknown field"),
    ({"keyslot": 1}, "a list"),
])
def test_a_malformed_use_in_a_status_is_refused_naming_it(bad: object, problem: str) -> None:
    doc = json.loads(status((KeyUse(T, 1, True),)).to_bytes())
    doc["recovery_key_used"] = bad
    with pytest.raises(RemoteIntegrityError, match="recovery_key_used") as exc:
        DeviceStatus.parse(json.dumps(doc).encode(), DEVICE, "devices/d/status")
    assert problem in str(exc.value) and "devices/d/status" in str(exc.value)


def test_it_sees_the_uses_in_the_fleet_table_and_the_device_view() -> None:
    quiet = fleetview.DeviceView("e" * 32, "laptop-2", T, last_contact=T)
    used = fleetview.DeviceView(DEVICE, "laptop-1", T, last_contact=T,
                                recovery_key_used=[UNREADABLE, KeyUse(T, 1, True)])
    table = fleetview.render_devices([quiet, used], T)
    assert ("laptop-1: recovery key used 2 times, last 2025-12-07 04:12 UTC (keyslot 1, "
            "sealed to the TPM again)") in table.splitlines()
    assert "laptop-2: recovery" not in table
    more = fleetview.DeviceView(DEVICE, "laptop-1", T, recovery_key_used=[
        KeyUse(T, 2, False)] * MAX_SENT)
    assert ("laptop-1: recovery key used 16 or more times, last 2025-12-07 04:12 UTC "
            "(keyslot 2, NOT sealed to the TPM again)") in fleetview.render_devices([more], T)
    # vmclient-admin show DEVICE (--json: the same fields as the heartbeat)
    doc = {**used.to_json(), "orders": [], "images": []}
    assert json.loads(json.dumps(doc))["recovery_key_used"][1] == {
        "keyslot": 1, "resealed": True, "time": T}
    lines = render_device(doc, T).splitlines()
    assert "  recovery key  used at an unknown time (keyslot unknown, NOT sealed to the TPM " \
           "again)" in lines
    assert "  recovery key  used 2025-12-07 04:12 UTC (keyslot 1, sealed to the TPM again)" \
        in lines
    assert not any("recovery key" in line
                   for line in render_device({**quiet.to_json(), "orders": [], "images": []},
                                             T).splitlines())
