"""Device records, orders, reports, order sequencing and the trusted clock."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmclient.store import crypto
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.orders import (
    DeviceRecord,
    Order,
    OrderState,
    Report,
    lease_remaining,
    trusted_now,
)

DEV = "d" * 32


def test_order_round_trips() -> None:
    o = Order(DEV, 3, 1000, "wipe", {"include_private": False})
    assert Order.parse(o.to_bytes(), DEV, 3, "o") == o


@pytest.mark.parametrize(("args", "problem"), [
    ({}, "'args.include_private': missing"),
    ({"include_private": "yes"}, "'args.include_private': must be true or false"),
    ({"include_private": False, "all": True}, "'args.all': unknown field"),
])
def test_order_arguments_are_strict(args: dict[str, object], problem: str) -> None:
    doc = json.loads(Order(DEV, 3, 1000, "wipe", {"include_private": False}).to_bytes())
    doc["args"] = args
    with pytest.raises(RemoteIntegrityError, match=problem):
        Order.parse(json.dumps(doc).encode(), DEV, 3, "o")


def test_rekey_restore_and_start_are_optional_flags_and_old_orders_still_read() -> None:
    """``vmclient-admin restore`` writes ``restore``/``start`` on its ``rekey`` order; an order
    written before them (or by ``vmclient-admin rekey``) reads as accept-only."""
    old = {"vm": "office", "from_device": "ab" * 16, "min_seq": 2}

    def parse(args: dict[str, object]) -> Order:
        doc = json.loads(Order(DEV, 3, 1000, "rekey", old).to_bytes())
        doc["args"] = args
        return Order.parse(json.dumps(doc).encode(), DEV, 3, "o")
    assert parse(old).args == {**old, "restore": False, "start": False}
    assert parse({**old, "restore": True}).args == {**old, "restore": True, "start": False}
    full = Order(DEV, 3, 1000, "rekey", {**old, "restore": True, "start": True})
    assert Order.parse(full.to_bytes(), DEV, 3, "o") == full
    with pytest.raises(RemoteIntegrityError, match=r"'args\.restore': must be true or false"):
        parse({**old, "restore": "yes"})
    with pytest.raises(RemoteIntegrityError, match=r"'args\.run': unknown field"):
        parse({**old, "restore": True, "run": True})


def test_order_unknown_action_and_renamed_seq_are_refused() -> None:
    doc = json.loads(Order(DEV, 3, 1000, "lock").to_bytes())
    with pytest.raises(RemoteIntegrityError, match="does not match the object name"):
        Order.parse(json.dumps(doc).encode(), DEV, 4, "o")
    doc["action"] = "format-disk"
    with pytest.raises(RemoteIntegrityError, match="'format-disk' is not one of"):
        Order.parse(json.dumps(doc).encode(), DEV, 3, "o")


def test_order_state_accepts_only_the_next_order_for_this_device() -> None:
    state = OrderState(DEV, last_seq=4, trusted_time=500)
    state.check(Order(DEV, 5, 1000, "lock"), "o")
    with pytest.raises(RemoteIntegrityError, match="already executed"):
        state.check(Order(DEV, 4, 1000, "lock"), "o")
    with pytest.raises(RemoteIntegrityError, match="out of sequence"):
        state.check(Order(DEV, 7, 1000, "lock"), "o")
    with pytest.raises(RemoteIntegrityError, match="addressed to device"):
        state.check(Order("e" * 32, 5, 1000, "lock"), "o")
    after = state.executed(Order(DEV, 5, 1000, "lock"))
    assert (after.last_seq, after.trusted_time) == (5, 1000)


def test_trusted_time_never_goes_back_and_lease_expires() -> None:
    assert trusted_now(100, 5000, (4000,)) == 5000  # clock set back
    assert trusted_now(6000, 5000, (4000,)) == 6000
    assert lease_remaining(5500, trusted_now(100, 5000)) == 500
    assert lease_remaining(5500, trusted_now(100, 6000)) == 0


def test_device_record_must_match_its_id(device_key: Ed25519PrivateKey, device_id: str) -> None:
    rec = DeviceRecord(device_id, "laptop-17", crypto.raw_public(device_key.public_key()),
                       b"\x02" * 32, 100)
    assert DeviceRecord.parse(rec.to_bytes(), device_id, "d") == rec
    other = Ed25519PrivateKey.from_private_bytes(b"\x08" * 32)
    forged = DeviceRecord(device_id, "x", crypto.raw_public(other.public_key()), b"\x02" * 32, 1)
    with pytest.raises(RemoteIntegrityError, match="'signing_key': is not the key"):
        DeviceRecord.parse(forged.to_bytes(), device_id, "d")


def test_report_round_trips_and_refuses_bad_outcome() -> None:
    rep = Report(DEV, 2, 100, 5, "refused", "wipe order signed by unknown key")
    assert Report.parse(rep.to_bytes(), DEV, 2, "r") == rep
    doc = json.loads(rep.to_bytes())
    doc["outcome"] = "maybe"
    with pytest.raises(RemoteIntegrityError, match="'outcome'"):
        Report.parse(json.dumps(doc).encode(), DEV, 2, "r")
