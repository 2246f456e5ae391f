"""Rekey (admin) and its acceptance (device), enrolment requests with an SSH key, revocation:
the pure and repository-level rules, on an in-memory repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmclient.admin.sshd import enrolment_dropbox, revocation
from vmclient.errors import UsageError, VMClientError
from vmclient.host.inventory import ManageConfig
from vmclient.manage import admin as it
from vmclient.manage import fleetview, status
from vmclient.manage import rekey as rk
from vmclient.manage.enrol import EnrolmentRequest
from vmclient.store import crypto, layout, repo
from vmclient.store.documents import Pointer, WrappedKey
from vmclient.store.errors import RemoteIntegrityError
from vmclient.store.format import signed_envelope
from vmclient.store.objects import Manifest
from vmclient.store.orders import DeviceRecord, Order
from vmclient.store.remote import MemoryStore

T = 1_764_000_000
VM = "office"
SSH = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4xvXz0Jb0mB7yqUuY3e6bC2n7dF0k2r5z0zQ2YQ8Hq dev"


class Dev:
    def __init__(self, name: str) -> None:
        self.name = name
        self.signing = crypto.Ed25519PrivateKey.generate()
        self.wrapping = crypto.X25519PrivateKey.generate()
        self.id = crypto.key_id(self.signing.public_key())
        self.rec = DeviceRecord(self.id, name, crypto.raw_public(self.signing.public_key()),
                                crypto.raw_public(self.wrapping.public_key()), T)


class World:
    def __init__(self) -> None:
        self.remote = MemoryStore()
        self.admin = crypto.Ed25519PrivateKey.generate()
        self.escrow = crypto.X25519PrivateKey.generate()
        self.keys = crypto.KeySet.generate()
        self.a, self.b = Dev("a"), Dev("b")

    async def setup(self) -> None:
        for d in (self.a, self.b):
            await repo.put_signed(self.remote, layout.device_record(d.id), self.admin,
                                  ("device", d.id), d.rec.to_bytes())
        for r in (self.a.wrapping.public_key(), self.escrow.public_key()):
            await repo.put_wrapped_key(self.remote, layout.vm_key(self.a.id, VM, crypto.key_id(r)),
                                       self.a.signing, WrappedKey.create(f"vm:{VM}", r, self.keys))
        self.remote.objects[layout.pack(layout.vm_store(self.a.id, VM), "ab" * 32)] = b"pack"
        for seq in (1, 2):
            label = layout.snapshot_name(seq)
            m = Manifest("snapshot", VM, label, seq, T, self.keys.check, (), self.a.id)
            digest = await repo.put_snapshot(self.remote, self.a.signing, self.keys, m)
            await repo.put_pointer(self.remote, self.a.signing,
                                   Pointer(VM, self.a.id, label, seq, T, digest))

    def cfg(self, tmp: Path) -> ManageConfig:
        return ManageConfig(state_dir=tmp / "manage", vm_keys_dir=tmp / "vmkeys",
                            images_dir=tmp / "images")

    def order(self, seq: int = 1, from_device: str = "", min_seq: int = 2) -> Order:
        return Order(self.b.id, seq, T, "rekey", {"vm": VM, "from_device": from_device
                                                  or self.a.id, "min_seq": min_seq})


@pytest.mark.asyncio
async def test_rekey_hands_the_escrowed_key_to_the_new_device_which_accepts_it(tmp_path: Path
                                                                               ) -> None:
    await _rekey_and_accept(tmp_path)


async def _rekey_and_accept(tmp: Path) -> None:
    w = World()
    await w.setup()
    result = await rk.rekey(w.remote, w.admin, w.escrow, VM, w.a.rec, w.b.rec)
    assert (result.seq, result.snapshot, result.skipped) == (2, "0000000002", 0)
    dst = layout.vm_dir(w.b.id, VM)
    assert w.remote.objects[layout.pack(layout.vm_store(w.b.id, VM), "ab" * 32)] == b"pack"
    assert w.remote.objects[f"{dst}/latest"] == w.remote.objects[layout.vm_pointer(w.a.id, VM)]
    assert set(await rk.writers(w.remote, w.admin.public_key(), w.b.id, VM)) == {w.a.id}
    again = await rk.rekey(w.remote, w.admin, w.escrow, VM, w.a.rec, w.b.rec)
    assert again.copied == 0 and again.skipped == result.copied  # a rerun copies nothing

    cfg = w.cfg(tmp)
    admin = w.admin.public_key()
    detail = await rk.accept(w.remote, admin, cfg, w.b.id, w.b.wrapping, w.order())
    assert "ready to restore" in detail
    src = await rk.restore_source(w.remote, admin, cfg, w.b.id, w.b.wrapping, VM,
                                  w.b.signing.public_key())
    assert src.keys.secret == w.keys.secret and set(src.signers) == {w.a.id, w.b.id}
    assert "secret" not in repr(src)
    key_file = cfg.vm_keys_dir / f"{VM}.wrapped"
    assert crypto.unwrap_key(w.b.wrapping, key_file.read_bytes(), "data-key",
                             f"vm:{VM}") == w.keys.secret
    assert key_file.stat().st_mode & 0o777 == 0o600

    # a rolled-back latest, a writer not in the directory, another key already here
    with pytest.raises(RemoteIntegrityError, match="seq 2 is older than seq 3"):
        await rk.accept(w.remote, admin, cfg, w.b.id, w.b.wrapping, w.order(min_seq=3))
    with pytest.raises(RemoteIntegrityError, match="not among the VM's writers"):
        await rk.accept(w.remote, admin, cfg, w.b.id, w.b.wrapping,
                        w.order(from_device="0" * 32))
    key_file.write_bytes(crypto.wrap_key(w.b.wrapping.public_key(), b"\x01" * 32, "data-key",
                                         f"vm:{VM}"))
    with pytest.raises(VMClientError, match="another data key"):
        await rk.accept(w.remote, admin, cfg, w.b.id, w.b.wrapping, w.order())
    # a writer record the server made up does not verify
    w.remote.objects[rk.writer_record(w.b.id, VM, w.b.id)] = signed_envelope(
        w.b.signing, "device", w.b.id, w.b.rec.to_bytes())
    with pytest.raises(RemoteIntegrityError):
        await rk.writers(w.remote, admin, w.b.id, VM)


@pytest.mark.asyncio
async def test_rekey_needs_the_organisations_escrow_key_and_two_devices() -> None:
    await _rekey_refusals()


async def _rekey_refusals() -> None:
    w = World()
    await w.setup()
    with pytest.raises(UsageError, match="no escrowed data key"):
        await rk.rekey(w.remote, w.admin, crypto.X25519PrivateKey.generate(), VM, w.a.rec,
                       w.b.rec)
    with pytest.raises(UsageError, match="same device"):
        await rk.rekey(w.remote, w.admin, w.escrow, VM, w.a.rec, w.a.rec)
    with pytest.raises(UsageError, match="no escrowed"):
        await rk.rekey(w.remote, w.admin, w.escrow, "other", w.a.rec, w.b.rec)
    assert not [p for p in w.remote.objects if p.startswith(layout.device_dir(w.b.id) + "/vms")]


@pytest.mark.asyncio
async def test_a_revoked_device_gets_no_orders_and_the_view_says_so() -> None:
    await _revoked()


async def _revoked() -> None:
    w = World()
    await w.setup()
    assert await it.revocation(w.remote, w.admin.public_key(), w.a.id) is None
    _rec, rev = await it.revoke(w.remote, w.admin, w.a.id, "wiped", T)
    _rec, same = await it.revoke(w.remote, w.admin, w.a.id, "again", T + 5)
    assert same == rev
    with pytest.raises(UsageError, match="revoked"):
        await it.issue_order(w.remote, w.admin, w.a.id, "lock", {}, T,
                             numbers=it.OrderNumbers(Path("/nonexistent/orders.json")))
    views = {v.device: v for v in await fleetview.devices(w.remote, w.admin.public_key())}
    assert views[w.a.id].revoked == T and not views[w.b.id].revoked
    assert [(m.vm, m.seq) for m in views[w.a.id].vms] == [(VM, 2)]
    assert "revoked" in fleetview.render_devices([views[w.a.id]], T)
    # a revocation the server forged does not count
    w.remote.objects[it.revocation_path(w.b.id)] = signed_envelope(
        w.b.signing, "revocation", w.b.id, it.Revocation(w.b.id, T, "x").to_bytes())
    with pytest.raises(RemoteIntegrityError):
        await it.revocation(w.remote, w.admin.public_key(), w.b.id)


def test_the_enrolment_proof_covers_the_ssh_key() -> None:
    d = Dev("laptop")
    req = EnrolmentRequest(d.id, "laptop", d.rec.signing_key, d.rec.wrapping_key, T,
                           ssh_key=SSH).with_proof("ABCD-EFGH-JKLM-NPQR")
    parsed = EnrolmentRequest.parse(req.to_bytes(), d.id, "enrolment/x")
    assert parsed == req and b'"version":2' in req.to_bytes()
    key = crypto.hkdf(b"ABCDEFGHJKLMNPQR", "enrol-code")
    assert parsed.proves(key)
    swapped = EnrolmentRequest(**{**vars(parsed), "ssh_key": SSH.replace("dev", "evil")})
    assert not swapped.proves(key)
    bad = req.to_bytes().replace(b"ssh-ed25519 ", b"ssh-ed25519 \\n")
    with pytest.raises(RemoteIntegrityError, match="ssh_key"):
        EnrolmentRequest.parse(bad, d.id, "enrolment/x")
    old = EnrolmentRequest(d.id, "laptop", d.rec.signing_key, d.rec.wrapping_key, T)
    assert b'"version":1' in old.with_proof("ABCD").to_bytes()


def test_the_drop_box_and_the_revocation_texts() -> None:
    box = enrolment_dropbox(SSH, "/srv/repo", "/etc/ssh/k")
    assert ("install", "-d", "-o", "root", "-g", "vmc-enrol", "-m", "1730",
            "/srv/repo/enrolment") in box.commands
    assert "ChrootDirectory /srv/repo" in box.match_block
    assert "ForceCommand internal-sftp" in box.match_block
    rev = revocation("ab" * 16, "/etc/ssh/k")
    script = rev.script()
    assert script.index("rm -f /etc/ssh/k/vmc-abababababab") < script.index("userdel")
    assert "pkill -KILL -u vmc-abababababab || true" in script
    assert f"# vmclient device {'ab' * 16}" in script


@pytest.mark.asyncio
async def test_the_heartbeat_names_the_release_and_only_the_device_can_write_it(tmp_path: Path
                                                                                ) -> None:
    osr = tmp_path / "os-release"
    osr.write_text('ID=vmclient\nVERSION_ID="1.2"\nBUILD_ID=20261126\n')
    assert status.release(osr).endswith("(vmclient 1.2 20261126)")
    assert status.release(tmp_path / "missing").startswith("vmclient ")
    await _heartbeat()


async def _heartbeat() -> None:
    w = World()
    await w.setup()
    st = status.DeviceStatus(w.a.id, T + 60, "vmclient 0.1.0", 3, T + 99, False, False)
    w.remote.objects[status.status_path(w.a.id)] = signed_envelope(
        w.a.signing, "status", w.a.id, st.to_bytes())
    views = {v.device: v for v in await fleetview.devices(w.remote, w.admin.public_key())}
    assert (views[w.a.id].last_contact, views[w.a.id].release) == (T + 60, "vmclient 0.1.0")
    assert views[w.a.id].lease_until == T + 99 and views[w.b.id].release == ""
    # B's status signed by A's key: refused, naming it
    w.remote.objects[status.status_path(w.b.id)] = signed_envelope(
        w.a.signing, "status", w.b.id, st.to_bytes())
    with pytest.raises(RemoteIntegrityError, match="status"):
        await fleetview.device_status(w.remote, w.b.rec)


@pytest.mark.asyncio
async def test_one_bad_report_marks_its_device_suspect_and_hides_nothing_else() -> None:
    await _suspect()


async def _suspect() -> None:
    w = World()
    await w.setup()
    w.remote.objects[layout.report(w.a.id, 1)] = b"VMCG not a report"
    views = {v.device: v for v in await fleetview.devices(w.remote, w.admin.public_key())}
    assert "report" in views[w.a.id].problem and not views[w.b.id].problem
    table = fleetview.render_devices(list(views.values()), T)
    assert "SUSPECT" in table and f"a: {views[w.a.id].problem}" in table
