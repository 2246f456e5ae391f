"""Fuzzing what the fleet management reads from the server: device records, orders,
reports, revocations, heartbeats, enrolment requests and escrowed recovery keys.

Orders, records and revocations are admin-signed, reports, heartbeats and recovery keys
device-signed, enrolment requests self-signed: each is fed as stored bytes
mutated (the envelope) and as a mutated body signed with the right key (the
parser behind it), through the functions the agent and the admin tool call.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vmclient.manage import admin as admin_mod
from vmclient.manage import enrol, fleetview, recovery
from vmclient.manage.recovery import RecoveryKey, format_key, object_path
from vmclient.manage.status import DeviceStatus, status_path
from vmclient.store import crypto, layout
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import open_envelope, signed_envelope
from vmclient.store.orders import DeviceRecord, Order, Report
from vmclient.store.remote import MemoryStore

from .mutate import mutated_bytes, mutated_json, outcome

ADMIN = crypto.Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
ADMIN_PUB = ADMIN.public_key()
DEVICE = crypto.Ed25519PrivateKey.from_private_bytes(b"\x03" * 32)
DEVICE_ID = crypto.key_id(DEVICE.public_key())
DEVICE_X = crypto.X25519PrivateKey.from_private_bytes(b"\x04" * 32)
RECORD = DeviceRecord(DEVICE_ID, "laptop-7", crypto.raw_public(DEVICE.public_key()),
                      crypto.raw_public(DEVICE_X.public_key()), 1000)
ORDERS = [Order(DEVICE_ID, 1, 5, "assign", {"vm": "office", "recipe": "office", "start": False}),
          Order(DEVICE_ID, 1, 5, "unassign", {"vm": "office"}),
          Order(DEVICE_ID, 1, 5, "renew-lease", {"lease_until": 99}),
          Order(DEVICE_ID, 1, 5, "lock"), Order(DEVICE_ID, 1, 5, "unlock"),
          Order(DEVICE_ID, 1, 5, "wipe", {"include_private": False}),
          Order(DEVICE_ID, 1, 5, "rekey", {"vm": "office", "from_device": "ab" * 16,
                                           "min_seq": 3, "restore": False, "start": False}),
          # vmclient-admin restore's: the device restores and starts the VM
          Order(DEVICE_ID, 1, 5, "rekey", {"vm": "office", "from_device": "ab" * 16,
                                           "min_seq": 3, "restore": True, "start": True})]
REPORT = Report(DEVICE_ID, 1, 6, 1, "done", "assigned office")
REVOCATION = admin_mod.Revocation(DEVICE_ID, 7, "stolen")
STATUS = DeviceStatus(DEVICE_ID, 8, "vmclient 1.0", 1, 99, False, False)
ESCROW = crypto.X25519PrivateKey.from_private_bytes(b"\x05" * 32)
RECOVERY = RecoveryKey.seal(ESCROW.public_key(), b"\x06" * 32, DEVICE_ID, 9,
                            "/dev/disk/by-partlabel/vmdata", 1)
REQUESTS = [enrol.EnrolmentRequest(DEVICE_ID, "laptop-7", RECORD.signing_key,
                                   RECORD.wrapping_key, 900).with_proof("ABCD-EFGH"),
            enrol.EnrolmentRequest(DEVICE_ID, "laptop-7", RECORD.signing_key,
                                   RECORD.wrapping_key, 900,
                                   ssh_key="ssh-ed25519 AAAAC3Nza me@laptop").with_proof("X")]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def doc(body: bytes) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(body)
    return value


def store(objects: dict[str, bytes], *, record: bool = True) -> MemoryStore:
    s = MemoryStore()
    if record:
        s.objects[layout.device_record(DEVICE_ID)] = signed_envelope(
            ADMIN, "device", DEVICE_ID, RECORD.to_bytes())
    s.objects.update(objects)
    return s


def read_record(blob: bytes) -> object:
    s = store({layout.device_record(DEVICE_ID): blob})
    return outcome(run, admin_mod.device_record(s, ADMIN_PUB, DEVICE_ID))


def read_record_on_the_laptop(blob: bytes) -> object:
    s = store({layout.device_record(DEVICE_ID): blob})
    return outcome(run, enrol.fetch_record(s, ADMIN_PUB, DEVICE_ID, DEVICE, DEVICE_X))


def read_order(blob: bytes) -> object:
    """What the agent does with ``devices/<id>/orders/000000000001``."""
    def agent(path: str = layout.order(DEVICE_ID, 1)) -> Order:
        _signer, body = open_envelope({crypto.key_id(ADMIN_PUB): ADMIN_PUB}, blob, "order",
                                      f"{DEVICE_ID}/1", path)
        return Order.parse(body, DEVICE_ID, 1, path)
    return outcome(agent)


def read_orders_as_admin(blob: bytes) -> object:
    return outcome(run, admin_mod.orders_of(store({layout.order(DEVICE_ID, 1): blob}),
                                            ADMIN_PUB, DEVICE_ID))


def read_report(blob: bytes) -> object:
    return outcome(run, admin_mod.reports_of(store({layout.report(DEVICE_ID, 1): blob}),
                                             ADMIN_PUB, DEVICE_ID))


def read_revocation(blob: bytes) -> object:
    s = store({admin_mod.revocation_path(DEVICE_ID): blob})
    return outcome(run, admin_mod.revocation(s, ADMIN_PUB, DEVICE_ID))


def read_status(blob: bytes) -> object:
    return outcome(run, fleetview.device_status(store({status_path(DEVICE_ID): blob}), RECORD))


def read_recovery_key(blob: bytes) -> object:
    """What ``vmclient-admin recovery-key`` does with ``devices/<id>/recovery-key``."""
    async def admin() -> str:
        doc = await recovery.fetch(store({object_path(DEVICE_ID): blob}), DEVICE_ID,
                                   DEVICE.public_key())
        return doc.unwrap(ESCROW, object_path(DEVICE_ID))
    return outcome(run, admin())


def read_request(blob: bytes) -> object:
    path = enrol.request_path(DEVICE_ID)
    return outcome(run, enrol.read_request(store({path: blob}, record=False), path, DEVICE_ID))


SIGNED = [
    (read_record, ADMIN, "device", DEVICE_ID, RECORD.to_bytes()),
    (read_record_on_the_laptop, ADMIN, "device", DEVICE_ID, RECORD.to_bytes()),
    *[(read_order, ADMIN, "order", f"{DEVICE_ID}/1", o.to_bytes()) for o in ORDERS],
    (read_orders_as_admin, ADMIN, "order", f"{DEVICE_ID}/1", ORDERS[0].to_bytes()),
    (read_report, DEVICE, "report", f"{DEVICE_ID}/1", REPORT.to_bytes()),
    (read_revocation, ADMIN, "revocation", DEVICE_ID, REVOCATION.to_bytes()),
    (read_status, DEVICE, "status", DEVICE_ID, STATUS.to_bytes()),
    (read_recovery_key, DEVICE, "recovery-key", DEVICE_ID, RECOVERY.to_bytes()),
    *[(read_request, DEVICE, "enrolment", DEVICE_ID, r.to_bytes()) for r in REQUESTS],
]


def test_the_valid_objects_read_back() -> None:
    assert read_record(signed_envelope(ADMIN, "device", DEVICE_ID, RECORD.to_bytes())) == RECORD
    for o in ORDERS:
        blob = signed_envelope(ADMIN, "order", f"{DEVICE_ID}/1", o.to_bytes())
        assert read_order(blob) == o
    assert read_report(signed_envelope(DEVICE, "report", f"{DEVICE_ID}/1",
                                       REPORT.to_bytes())) == [REPORT]
    assert read_revocation(signed_envelope(ADMIN, "revocation", DEVICE_ID,
                                           REVOCATION.to_bytes())) == REVOCATION
    assert read_status(signed_envelope(DEVICE, "status", DEVICE_ID,
                                       STATUS.to_bytes())) == STATUS
    for r in REQUESTS:
        assert read_request(signed_envelope(DEVICE, "enrolment", DEVICE_ID, r.to_bytes())) == r
    assert read_recovery_key(signed_envelope(DEVICE, "recovery-key", DEVICE_ID,
                                             RECOVERY.to_bytes())) == format_key(b"\x06" * 32)


@given(st.sampled_from(SIGNED), st.data())
def test_stored_objects_with_mutated_bytes(case: tuple[Any, ...], data: st.DataObject) -> None:
    read, key, obj_type, obj_id, body = case
    read(data.draw(mutated_bytes(signed_envelope(key, obj_type, obj_id, body),
                                 max_mutations=3)))


@given(st.sampled_from(SIGNED), st.data())
def test_bodies_past_a_valid_signature(case: tuple[Any, ...], data: st.DataObject) -> None:
    read, key, obj_type, obj_id, body = case
    read(signed_envelope(key, obj_type, obj_id, data.draw(mutated_json(doc(body)))))


def test_a_lone_surrogate_is_refused_rather_than_read() -> None:
    """A record named "\\ud800" was read, and failed where it was written again
    (UnicodeEncodeError in canonical_json)."""
    body = doc(RECORD.to_bytes())
    body["name"] = "\ud800"
    blob = signed_envelope(ADMIN, "device", DEVICE_ID, json.dumps(body).encode())
    err = read_record(blob)
    assert isinstance(err, RemoteIntegrityError) and "surrogate" in err.problem
