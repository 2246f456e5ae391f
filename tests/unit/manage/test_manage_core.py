"""Pure parts of remote management: trusted time, lease, state file, domain identity,
key shredding and rotation, admin order numbering."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.errors import UsageError
from vmclient.host.files import shred
from vmclient.host.inventory import ManageConfig, parse_domain
from vmclient.host.keys import DeviceKeys
from vmclient.host.lease import DeviceState, Lease, StateFile, TimeRecord, advance
from vmclient.manage import admin as it
from vmclient.manage import fleetview
from vmclient.manage.wipe import rotate_wrapping_key
from vmclient.store import crypto, layout
from vmclient.store.orders import DeviceRecord, Order, OrderState
from vmclient.store.remote import Entry, MemoryStore
from vmclient.store.repo import put_signed

T = 1_764_000_000
DAY = 86400


def test_trusted_time_counts_monotonic_time_when_the_clock_is_set_back() -> None:
    rec = advance(TimeRecord(), T, 100.0, "b1")
    assert rec == TimeRecord(T, "b1", 100.0)
    # an hour later the user sets the wall clock back a day: the hour still counts
    rec = advance(rec, T - 86400, 3700.0, "b1")
    assert rec.time == T + 3600
    # after a reboot (new boot id, monotonic restarts) the recorded time is the floor
    rec = advance(rec, T - 86400, 3.0, "b2")
    assert rec.time == T + 3600
    # a signed time from the datacenter moves it forward; the wall clock may too
    assert advance(rec, T, 4.0, "b2", (T + 7200,)).time == T + 7200
    assert advance(rec, T + 9000, 4.0, "b2").time == T + 9000


def test_lease_allows_business_work_only_while_valid_unlocked_and_not_wiped() -> None:
    assert Lease(T + 10, T, False, False).business_allowed
    assert Lease(T + 10, T, False, False).remaining == 10
    assert not Lease(T, T, False, False).business_allowed
    assert "expired" in Lease(T, T + 5, False, False).reason
    assert "locked" in Lease(T + 10, T, True, False).reason
    assert "wiped" in Lease(T + 10, T, True, True).reason


def test_state_file_round_trips_and_is_root_only(tmp_path: Path) -> None:
    f = StateFile(tmp_path / "m")
    s = DeviceState(device="d" * 32, enrolled=True, last_seq=3, clock=TimeRecord(T, "b", 1.5),
                    lease_until=T + 5, outbox=({"seq": 1},), reported=("ab",),
                    executed={"3": "cd"})
    f.save(s)
    assert f.load() == s
    assert f.path.stat().st_mode & 0o777 == 0o600
    assert StateFile(tmp_path / "none").load() == DeviceState()


def test_domain_identity_comes_from_vmclient_metadata() -> None:
    xml = """<domain><name>office</name><metadata>
      <vmc:vm xmlns:vmc="https://vmclient.org/xmlns/vm/1" kind="business"/></metadata>
      <devices><disk device="disk"><source file="/i/office/system.qcow2">
        <encryption format="luks"><secret type="passphrase" uuid="u1"/></encryption>
      </source></disk><disk device="cdrom"><source file="/x.iso"/></disk></devices></domain>"""
    vm = parse_domain(xml, "uuid-1")
    assert vm is not None
    assert (vm.name, vm.kind, vm.disks, vm.secrets) == ("office", "business",
                                                        ("/i/office/system.qcow2",), ("u1",))
    assert parse_domain("<domain><name>foreign</name></domain>", "u") is None
    assert parse_domain(xml.replace("business", "root"), "u") is None


def test_shred_overwrites_and_removes(tmp_path: Path) -> None:
    key = tmp_path / "k"
    key.write_bytes(b"secret" * 10)
    linked = tmp_path / "hard-link"  # a second name sees the overwritten bytes
    linked.hardlink_to(key)
    assert shred(key) and not key.exists()
    assert linked.read_bytes() != b"secret" * 10 and len(linked.read_bytes()) == 60
    assert not shred(key)


def test_wrapping_key_rotation_rewraps_kept_keys_and_is_resumable(tmp_path: Path) -> None:
    cfg = ManageConfig(state_dir=tmp_path, vm_keys_dir=tmp_path / "vk", images_dir=tmp_path)
    store = DeviceKeys(cfg.device_keys_dir)
    store.ensure()
    old = store.wrapping()
    secret = b"\x07" * 32
    cfg.vm_keys_dir.mkdir()
    for vm in ("priv", "gone"):
        (cfg.vm_keys_dir / f"{vm}.wrapped").write_bytes(
            crypto.wrap_key(old.public_key(), secret, "data-key", f"vm:{vm}"))
    rotate_wrapping_key(cfg, ["priv"])
    new = store.wrapping()
    assert crypto.raw_private(new) != crypto.raw_private(old)
    blob = (cfg.vm_keys_dir / "priv.wrapped").read_bytes()
    assert crypto.unwrap_key(new, blob, "data-key", "vm:priv") == secret
    rotate_wrapping_key(cfg, ["priv"])  # a second run (after a crash) rotates again safely
    assert crypto.unwrap_key(store.wrapping(), (cfg.vm_keys_dir / "priv.wrapped").read_bytes(),
                             "data-key", "vm:priv") == secret


@pytest.mark.asyncio
async def test_admin_numbers_orders_past_forgeries_and_checks_arguments(tmp_path: Path) -> None:
    await _numbering(tmp_path)


async def _enrolled(remote: MemoryStore) -> tuple[crypto.Ed25519PrivateKey, str]:
    admin, device_key = crypto.Ed25519PrivateKey.generate(), crypto.Ed25519PrivateKey.generate()
    dev = crypto.key_id(device_key.public_key())
    rec = DeviceRecord(dev, "l", crypto.raw_public(device_key.public_key()), b"\x09" * 32, T)
    await put_signed(remote, layout.device_record(dev), admin, ("device", dev), rec.to_bytes())
    return admin, dev


async def _numbering(tmp: Path) -> None:
    remote = MemoryStore()
    admin, dev = await _enrolled(remote)
    numbers = it.OrderNumbers(tmp / "orders.json")

    async def issue(action: str, args: dict[str, object]) -> Order:
        return await it.issue_order(remote, admin, dev, action, args, T, numbers=numbers)

    assert (await issue("lock", {})).seq == 1
    # the server plants a forged order 2 and an order 9: neither counts
    remote.objects[layout.order(dev, 2)] = b"VMCG forged"
    remote.objects[layout.order(dev, 9)] = remote.objects[layout.order(dev, 1)]
    o = await issue("renew-lease", {"lease_until": T + 9})
    assert o.seq == 2  # the forgery at 2 was replaced
    assert [x.seq for x in await it.orders_of(remote, admin.public_key(), dev)] == [1, 2]
    with pytest.raises(UsageError, match="takes include_private"):
        await issue("wipe", {})
    with pytest.raises(UsageError, match="unknown order"):
        await issue("format", {})
    views = await fleetview.devices(remote, admin.public_key())
    assert [(v.device, v.pending, v.lease_until) for v in views] == [(dev, [1, 2], T + 9)]


class HidingStore(MemoryStore):
    """A server that leaves orders out of its listings (they are still there, or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[str] = set()

    async def list(self, prefix: str) -> list[Entry]:
        return [e for e in await super().list(prefix) if e.path not in self.hidden]


@pytest.mark.asyncio
async def test_a_server_hiding_executed_orders_cannot_make_the_admin_reuse_a_number(
        tmp_path: Path) -> None:
    """Issue 13 §2.4: the laptop executed orders 1-3; the server deletes them (or leaves them
    out of the listing); the wipe the admin issues next must be number 4, not 1."""
    remote = HidingStore()
    admin, dev = await _enrolled(remote)
    numbers = it.OrderNumbers(tmp_path / "orders.json")
    for _ in range(3):
        await it.issue_order(remote, admin, dev, "lock", {}, T, numbers=numbers)
    laptop = OrderState(dev, last_seq=3)  # it executed all three
    for seq in (1, 2):
        del remote.objects[layout.order(dev, seq)]
    remote.hidden = {layout.order(dev, 3)}  # still there, not listed
    wipe = await it.issue_order(remote, admin, dev, "wipe", {"include_private": False},
                                T, numbers=numbers)
    assert wipe.seq == 4
    laptop.check(wipe, layout.order(dev, 4))  # accepted, not a replay
    assert (tmp_path / "orders.json").stat().st_mode & 0o777 == 0o600

    # another admin machine (its own orders.json, up to 3) while the listing hides
    # order 4: the exclusive put collides with the valid order 4 and moves on to 5,
    # never replacing it
    other = it.OrderNumbers(tmp_path / "other" / "orders.json")
    other.record(dev, 3)
    remote.hidden = {layout.order(dev, 4)}
    nxt = await it.issue_order(remote, admin, dev, "unlock", {}, T, numbers=other)
    assert nxt.seq == 5 and other.last(dev) == 5
    assert await it.signed_order(remote, admin.public_key(), dev, 4) == wipe


def test_admin_cli_words_become_typed_order_arguments() -> None:
    assert it.order_args("renew-lease", ["lease_until=+14d"], T) == {"lease_until": T + 14 * DAY}
    assert it.order_args("renew-lease", [f"lease_until={T}"], T) == {"lease_until": T}
    assert it.order_args("wipe", ["include_private=no"], T) == {"include_private": False}
    assert it.order_args("unassign", ["vm=office"], T) == {"vm": "office"}
    with pytest.raises(UsageError, match="yes or no"):
        it.order_args("wipe", ["include_private=maybe"], T)
    with pytest.raises(UsageError, match="expected vm="):
        it.order_args("unassign", ["name=office"], T)
    with pytest.raises(UsageError, match="unknown order"):
        it.order_args("reformat", [], T)
    view = fleetview.DeviceView("d" * 32, "laptop-1", T, last_contact=T, lease_until=T + 3 * DAY,
                         pending=[4, 5], refused=2)
    table = fleetview.render_devices([view], T)
    assert "laptop-1" in table and "+3d" in table and "4,5" in table
