"""Issue 7's "restore onto a second device after a wipe", over a real sshd and real libvirt.

Laptop A (its own state directory and keys) runs a business VM that the sync
engine uploads over A's confined SFTP account; IT wipes A with ``vmclient-admin
order … wipe``, sees the verified report, revokes A (whose SSH login then
fails), enrols laptop B and runs ``vmclient-admin restore VM --to laptop-b``.  B
fetches its orders over SFTP, accepts the re-keyed data key, restores the disk
with the library restore (:func:`vmclient.sync.restore.restore_vm`), and the
domain starts under B's lease, and stops when IT locks B.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid as uuidlib
from pathlib import Path

import libvirt
import pytest
from fixtures_sshd import Account, SSHServer
from fixtures_virt import IMAGES, URI, cpu_profile
from orders_env import dom_state
from remote_env import Admin, RemoteLaptop, fleet
from sync_env import DOMAIN_XML, VM_NS, hmp_write, qemu_io, same_content

from testlib import need, run
from vmclient.host.files import write_private
from vmclient.host.keys import DeviceKeys
from vmclient.manage.vms import BusinessWorkRefused
from vmclient.store import crypto, layout, repo
from vmclient.store.errors import StoreError
from vmclient.sync import engine
from vmclient.sync.restore import restore_vm
from vmclient.virt.libvirt import Hypervisor

pytestmark = pytest.mark.asyncio(loop_scope="session")
MIB = 1 << 20


def define(conn: libvirt.virConnect, name: str, disk: Path) -> libvirt.virDomain:
    """The domain as provisioning defines a synced business VM (plain qcow2 here)."""
    return conn.defineXML(DOMAIN_XML.format(
        virt=cpu_profile().domain_type, name=name, uuid=uuidlib.uuid4(),
        disk=disk, ns=VM_NS, kind="business", sync="disks", channel=""))


def install_key(lap: RemoteLaptop, vm: str, keys: crypto.KeySet) -> None:
    """The VM's data key, wrapped for the device key, where provisioning keeps it."""
    wrapping = DeviceKeys(lap.cfg.device_keys_dir).wrapping()
    lap.cfg.vm_keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(lap.cfg.vm_keys_dir / f"{vm}.wrapped",
                  crypto.wrap_key(wrapping.public_key(), keys.secret, "data-key", f"vm:{vm}"))


async def test_restore_onto_a_second_device_after_a_wipe(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for tool in ("qemu-img", "qemu-io", "qemu-system-x86_64"):
        need(shutil.which(tool) is not None, f"{tool} is not installed")
    async with fleet(tmp_path, capsys) as (server, admin, dropbox, hv, prefix):
        # a plain connection for defining and HMP; closed before the fleet's, whose
        # close drains libvirt's event handles (this one's included)
        conn = libvirt.open(URI)
        try:
            await _scenario(conn, tmp_path, server, admin, dropbox, hv, prefix)
        finally:
            conn.close()


async def _scenario(conn: libvirt.virConnect, tmp_path: Path, server: SSHServer, admin: Admin,
                    dropbox: Account, hv: Hypervisor, prefix: str) -> None:
    a = RemoteLaptop("laptop-a", tmp_path / "a", prefix, server, hv)
    dev_a = await admin.enrol(a, dropbox)
    assert (await a.poll())["enrolled"]

    # A's business VM: data written offline, then running, synced twice over SFTP
    vm = f"{prefix}-office"
    disk_a = a.cfg.images_dir / vm / "system.qcow2"
    disk_a.parent.mkdir(parents=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", disk_a, "64M"], check=True)
    qemu_io(disk_a, f"write -P 0x11 0 {4 * MIB}", f"write -P 0x22 {30 * MIB} {MIB}")
    dom = define(conn, vm, disk_a)
    keys = crypto.KeySet.generate()
    install_key(a, vm, keys)
    await a.agent(None).start_vm(vm)  # the lease-checked start path
    assert dom_state(vm) == libvirt.VIR_DOMAIN_RUNNING
    signing = DeviceKeys(a.cfg.device_keys_dir).signing()
    wrapping = DeviceKeys(a.cfg.device_keys_dir).wrapping()
    store = a.store()
    try:
        for write in ("", f"write -P 0x33 {50 * MIB} {256 * 1024}"):
            if write:
                hmp_write(dom, write)
            await engine.sync_vm(hv, store, engine.SyncJob(
                dom.UUIDString(), signing, keys, state_dir=a.tmp / "sync",
                scratch_dir=IMAGES / prefix / "scratch",
                recipients=[wrapping.public_key(), admin.escrow.public_key()]))
    finally:
        await store.close()
    reference = tmp_path / "reference.qcow2"  # what A's disk held at the last sync
    run(["qemu-img", "convert", "-U", "-O", "qcow2", disk_a, reference], check=True)
    assert await admin("devices") == 0
    assert re.search(rf"{vm} #2 ", admin.out), admin.out

    # the kill pill: keys and VM gone on A; the report arrives and verifies
    assert await admin("order", "laptop-a", "wipe", "--yes") == 0, admin.err
    status = await a.poll()
    assert status["wiped"] and not (a.cfg.vm_keys_dir / f"{vm}.wrapped").exists()
    assert not disk_a.exists() and dom_state(vm) is None
    assert await admin("reports", "laptop-a") == 0
    assert re.search(r"order 1\s+done\s+wiped 1 VM", admin.out), admin.out

    # revoke A: no further orders, and its SSH login fails on the real sshd
    assert await admin("devices", "revoke", "laptop-a", "--server-keys",
                       str(server.keys)) == 0, admin.err
    assert "SSH access removed" in admin.out
    assert not (server.keys / a.account.user).exists()
    gone = a.store(attempts=1)
    try:
        with pytest.raises(StoreError):
            await gone.check()
    finally:
        await gone.close()
    assert await admin("order", "laptop-a", "unlock") == 64 and "revoked" in admin.err
    assert await admin("devices", "--json") == 0 and '"revoked": 0' not in admin.out

    # B is enrolled; restore --to B: rekey from escrow + the orders B needs
    b = RemoteLaptop("laptop-b", tmp_path / "b", prefix, server, hv)
    dev_b = await admin.enrol(b, dropbox)
    assert (await b.poll())["enrolled"]
    assert await admin("rekey", vm, "--to", "laptop-a") == 64 and "revoked" in admin.err
    keys_dir = admin.repo.key_dir
    assert await admin("restore", vm, "--to", "laptop-b", "--escrow-key",
                       str(keys_dir / "admin.pem")) == 78
    assert "escrow" in admin.err and not (server.repo / "devices" / dev_b / "vms").exists()
    assert await admin("restore", vm, "--to", "laptop-b", "--escrow-key",
                       str(keys_dir / "escrow.pem")) == 0, admin.err
    assert f"snapshot {layout.snapshot_name(2)} (seq 2)" in admin.out, admin.out
    chown = re.search(r"^chown -R (\S+) (\S+)$", admin.out, re.M)
    assert chown, admin.out
    run(["chown", "-R", chown[1], chown[2]], check=True)  # as printed
    status = await b.poll()
    assert status["last_order"] == 2 and status["business_allowed"], status
    assert await admin("reports", "laptop-b", "--json") == 0
    renewed, rekeyed = json.loads(admin.out)
    assert (renewed["order"], renewed["outcome"]) == (1, "done"), renewed  # the lease first
    # this laptop's agent runs without provd: the key is installed, the restore is left to
    # the user (with provd the agent restores it: test_journey.py)
    assert (rekeyed["order"], rekeyed["outcome"]) == (2, "failed"), rekeyed
    assert rekeyed["detail"] == (f"{vm}: data key installed, but restoring is not supported "
                                 f"on this laptop yet: run vmclientctl vm restore {vm}")

    # B restores the disk with the library restore and starts the VM under its lease
    disk_b = b.cfg.images_dir / vm / "system.qcow2"
    disk_b.parent.mkdir(parents=True)
    store = b.store()
    try:
        src = await b.agent(store).restore_source(vm)
        assert dev_a in src.signers and src.known_seq == 2
        result = await restore_vm(store, src.signers, src.keys, device=dev_b, vm=vm,
                                  dest={"vda": disk_b}, known_seq=src.known_seq)
    finally:
        await store.close()
    assert result.seq == 2
    assert same_content(reference, disk_b)
    dom_b = define(conn, vm, disk_b)
    await b.agent(None).start_vm(vm)
    assert dom_state(vm) == libvirt.VIR_DOMAIN_RUNNING

    # B keeps syncing into the copy: snapshot 3, on top of A's, signed by B
    hmp_write(dom_b, f"write -P 0x44 {60 * MIB} {64 * 1024}")
    keys_b = DeviceKeys(b.cfg.device_keys_dir)
    store = b.store()
    try:
        third = await engine.sync_vm(hv, store, engine.SyncJob(
            dom_b.UUIDString(), keys_b.signing(), src.keys,
            state_dir=b.tmp / "sync", scratch_dir=IMAGES / prefix / "scratch",
            recipients=[keys_b.wrapping().public_key(), admin.escrow.public_key()],
            writers=src.signers))
        latest = await repo.get_pointer(store, {dev_b: keys_b.signing().public_key()}, dev_b,
                                        vm)
    finally:
        await store.close()
    assert (third.seq, third.mode, third.uploaded_chunks) == (3, "full", 1)
    assert latest.seq == 3 and latest.device == dev_b

    # it runs under B's lease: IT locks B, the VM is saved and stopped and may not start
    assert await admin("order", "laptop-b", "lock") == 0
    await b.poll()
    assert dom_state(vm) == libvirt.VIR_DOMAIN_SHUTOFF
    with pytest.raises(BusinessWorkRefused, match="locked"):
        await b.agent(None).start_vm(vm)
