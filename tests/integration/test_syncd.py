"""vmclient-syncd on a private system bus (real policy) with dbusmock logind, UPower and
NetworkManager, a real libvirtd VM and a repository directory: SyncNow, the policy
(battery, metered link), sleep pausing a sync in flight, the CLI, permissions."""

from __future__ import annotations

import asyncio
import shutil
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from fixtures_bus import PrivateSystemBus
from powerd_harness import wait_for
from sync_env import MIB, World, world
from syncd_env import IFACE, NAME, PATH, Peers, SyncDaemon, as_json

from testlib import INTERFACES, need
from vmclient.host.files import write_private
from vmclient.host.inventory import ManageConfig
from vmclient.manage import admin as it
from vmclient.manage.agent import Agent
from vmclient.manage.enrol import CodeBook, process_requests
from vmclient.store import crypto, layout, repo
from vmclient.store.objects import Index
from vmclient.sync.status import SyncOutcome, SyncState

NOBODY = 65534


@pytest.fixture
def peers(system_bus: PrivateSystemBus) -> Peers:
    return Peers(system_bus)


@pytest.mark.asyncio(loop_scope="session")
async def test_syncd_now_policy_cli_and_permissions(system_bus: PrivateSystemBus, peers: Peers,
                                                    tmp_path: Path) -> None:
    need(shutil.which("setpriv") is not None, "setpriv is not installed")
    async with world(tmp_path) as w:
        dom = w.create("d", data=[(0x11, 0, 2 * MIB), (0x22, 20 * MIB, MIB)])
        vm = dom.name()
        d = SyncDaemon(system_bus, w, tmp_path, [vm],
                       "[network]\non_demand_overrides = false\n").start()
        try:
            # introspection is the shipped XML
            xml = d.conn.get_object(NAME, PATH).Introspect(
                dbus_interface="org.freedesktop.DBus.Introspectable")
            live = ET.fromstring(xml).find(f"interface[@name='{IFACE}']")
            shipped = ET.parse(INTERFACES / f"{IFACE}.xml").getroot() \
                .find("interface")
            assert live is not None and shipped is not None
            assert sorted((m.tag, m.get("name"), m.get("type")) for m in live) == \
                sorted((m.tag, m.get("name"), m.get("type")) for m in shipped)
            assert d.vm(vm)["LastSnapshot"] == "" and d.vm(vm)["LastSync"] == 0

            # SyncNow: a snapshot exists, status shows it, verify and snapshots see it
            r = d.cli("now", vm, "--json")
            assert r.returncode == 0, r.stderr + d.log()
            assert as_json(r) == [{"vm": vm, "outcome": "synced", "detail": "0000000001"}]
            assert (await w.verify(vm)).seq == 1
            st = as_json(d.cli("status", "--json"))
            (row,) = [v for v in st["vms"] if v["name"] == vm]
            assert row["snapshot"] == "0000000001" and row["last_sync"] > 0
            assert row["state"] == "idle" and row["bytes_done"] == row["bytes_total"] > 0
            text = d.cli("status")
            assert text.returncode == 0 and vm in text.stdout and "0000000001" in text.stdout
            v = d.cli("verify", vm, "--json")
            assert v.returncode == 0, v.stderr
            assert as_json(v)["snapshot"] == "0000000001" and as_json(v)["chunks"] > 0
            assert d.cli("verify", vm).stdout.startswith(f"{vm}: snapshot 0000000001 verified")
            snaps = as_json(d.cli("snapshots", vm, "--json"))
            assert [(s["snapshot"], s["latest"]) for s in snaps] == [("0000000001", True)]

            # on battery below the threshold: skipped with the reason; on AC: runs
            peers.battery(True, 20.0)
            r = d.cli("now", vm)
            assert r.returncode == 75, (r.returncode, r.stderr)
            assert "on battery at 20% (below 30%)" in r.stderr
            assert d.vm(vm)["State"] == SyncState.WAITING and "battery" in d.vm(vm)["Reason"]
            # on the bus the outcome and the states are u: 2 Skipped, 4 Waiting
            rows = d.conn.get_object(NAME, PATH).SyncNow(vm, dbus_interface=IFACE, timeout=60)
            assert [(r[0], r[1]) for r in rows] == [(vm, SyncOutcome.SKIPPED)]
            assert "battery" in rows[0][2] and d.props()["State"] == SyncState.WAITING
            peers.battery(True, 80.0)  # on battery, but charged enough
            assert as_json(d.cli("now", vm, "--json"))[0]["detail"] == "0000000002"
            peers.battery(False, 80.0)

            # a metered link: skipped (this config lets no on-demand sync override it)
            peers.metered(True)
            r = d.cli("now", "--json")
            assert r.returncode == 75
            assert as_json(r) == [{"vm": vm, "outcome": "skipped", "detail": "metered network"}]
            assert "metered" in d.cli("status").stdout
            peers.metered(False)
            assert as_json(d.cli("now", "--json")) == [
                {"vm": vm, "outcome": "synced", "detail": "0000000003"}]
            assert (await w.verify(vm)).seq == 3

            # offline (NetworkManager disconnected), then a datacenter that does not answer
            peers.network_state(20)
            r = d.cli("now", vm)
            assert r.returncode == 75 and f"{vm}: skipped: offline" in r.stderr, r.stderr
            peers.network_state(70)
            config = w.repo_dir / layout.CONFIG
            config.rename(config.with_suffix(".away"))
            r = d.cli("now", vm)
            assert r.returncode == 75 and "the datacenter does not answer" in r.stderr, r.stderr
            config.with_suffix(".away").rename(config)

            # a user outside the vmclient group reads the status but may not sync
            r = d.cli("status", "--json", user=NOBODY)
            assert r.returncode == 0, r.stderr
            assert [v["snapshot"] for v in as_json(r)["vms"]] == ["0000000003"]
            r = d.cli("now", vm, user=NOBODY)
            assert r.returncode == 77, (r.returncode, r.stderr)
            assert "vmclient" in r.stderr
            assert d.cli("verify", vm, user=NOBODY).returncode == 77
            assert d.cli("now", "no-such-vm").returncode == 1
        finally:
            d.stop()


def _packs(w: World, vm: str) -> dict[str, int]:
    root = w.repo_dir / layout.vm_store(w.a.id, vm) / "packs"
    return {p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()} \
        if root.exists() else {}


async def _chunk_records(w: World, vm: str) -> Counter[bytes]:
    """How many packs hold each chunk id, by the indexes."""
    store_root = layout.vm_store(w.a.id, vm)
    counts: Counter[bytes] = Counter()
    for e in await w.remote.list(f"{store_root}/index"):
        name = e.path.rsplit("/", 1)[-1]
        body = await repo.get_sealed(w.remote, e.path, w.keys[vm].enc, "index", name)
        for recs in Index.parse(body, name, e.path).packs.values():
            counts.update(cid for cid, *_ in recs)
    return counts


@pytest.mark.asyncio(loop_scope="session")
async def test_syncd_sleep_pauses_and_resume_completes(system_bus: PrivateSystemBus, peers: Peers,
                                                       tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        dom = w.create("z", random_mib=48)
        vm = dom.name()
        # 8 MiB/s: the 48 MiB upload is in flight for a few seconds
        d = SyncDaemon(system_bus, w, tmp_path, [vm], "[network]\nmax_upload_mib_s = 8.0\n")
        d.start()
        try:
            wait_for(peers.syncd_holds_sleep_lock, 10, "the delay lock on sleep")
            cli = d.cli("now", vm, "--json", wait=False)
            wait_for(lambda: _packs(w, vm), 120, "a first pack in the repository")
            peers.logind.prepare_for_sleep(True)
            try:
                wait_for(lambda: d.vm(vm)["State"] == SyncState.PAUSED, 60, "the sync paused")
            except AssertionError as exc:  # (once in a CI rehearsal: say where it was)
                raise AssertionError(f"{exc}: the VM's sync is {d.vm(vm)}, the CLI "
                                     f"{'runs' if cli.poll() is None else 'ended'}; "
                                     f"syncd's log:\n{d.log()[-4000:]}") from None
            wait_for(lambda: not peers.syncd_holds_sleep_lock(), 10, "the lock released")
            assert "sleep" in d.vm(vm)["Reason"]
            assert d.props()["State"] == SyncState.PAUSED
            assert cli.poll() is None  # SyncNow is answered when the sync completes
            arrived = _packs(w, vm)
            assert arrived
            assert not (w.repo_dir / layout.vm_pointer(w.a.id, vm)).exists()

            peers.logind.prepare_for_sleep(False)
            out, err = cli.communicate(timeout=300)
            assert cli.returncode == 0, err + d.log()
            assert '"synced"' in out and "0000000001" in out
            assert f"{vm}: upload    100.0%" in err  # the progress line (stderr)
            wait_for(peers.syncd_holds_sleep_lock, 10, "the delay lock taken again")
            assert d.vm(vm)["State"] == SyncState.IDLE and d.vm(vm)["LastSnapshot"] == "0000000001"
            after = _packs(w, vm)
            assert all(after.get(p) == n for p, n in arrived.items())  # kept, not rewritten
            counts = await _chunk_records(w, vm)
            assert counts and max(counts.values()) == 1  # no chunk uploaded twice
            assert (await w.verify(vm)).seq == 1
        finally:
            d.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_syncd_hosts_the_management_agent(system_bus: PrivateSystemBus, peers: Peers,
                                                tmp_path: Path) -> None:
    """Orders reach an enrolled laptop through syncd's cycle; the lease is a property."""
    async with world(tmp_path) as w:
        manage = tmp_path / "manage"
        # one set of device keys: syncd signs snapshots and the agent enrols with the same
        write_private(tmp_path / "device" / "signing.key", crypto.raw_private(w.a.signing))
        write_private(tmp_path / "device" / "wrapping.key", crypto.raw_private(w.a.wrapping))
        cfg = ManageConfig(state_dir=manage, vm_keys_dir=tmp_path / "provision" / "keys",
                           images_dir=tmp_path / "images", name_prefix=f"{w.prefix}-",
                           device_dir=tmp_path / "device")
        agent = Agent(cfg, w.remote, w.hv)
        book = CodeBook(tmp_path / "admin" / "codes.json")
        code = book.issue("laptop-s", int(time.time()))
        await agent.request_enrolment(crypto.raw_public(w.admin.public_key()), "laptop-s", code)
        [done] = await process_requests(w.remote, w.admin, book, int(time.time()))
        assert done.enrolled, done
        device = agent.state_file.load().device
        until = int(time.time()) + 30 * 86400
        order = await it.issue_order(w.remote, w.admin, device, "renew-lease",
                                     {"lease_until": until}, int(time.time()),
                                     numbers=it.OrderNumbers(tmp_path / "admin" / "orders.json"))

        d = SyncDaemon(system_bus, w, tmp_path, [], manage=manage)
        d.start()
        try:
            # the cycle completes the enrolment, fetches and executes the order, reports it
            deadline = time.monotonic() + 60
            while not any(r.order == order.seq and r.outcome == "done" for r in
                          await it.reports_of(w.remote, w.admin.public_key(), device)):
                assert time.monotonic() < deadline, "no report of the order\n" + d.log()
                await asyncio.sleep(0.1)
            wait_for(lambda: d.props()["LeaseRemaining"] > 29 * 86400, 30, "the lease renewed")
            assert str(d.props()["LeaseState"]).startswith("lease valid for")
            assert agent.state_file.load().last_seq == order.seq
        finally:
            d.stop()


@pytest.mark.asyncio(loop_scope="session")
async def test_syncd_schedule_syncs_by_itself_and_retries_a_failure_later(
        system_bus: PrivateSystemBus, peers: Peers, tmp_path: Path) -> None:
    async with world(tmp_path) as w:
        ok_vm = w.create("s", data=[(0x33, 0, MIB)]).name()
        no_key = w.create("k", start=False).name()  # provisioning holds no key for it
        d = SyncDaemon(system_bus, w, tmp_path, [ok_vm],
                       schedule="enabled = true\ninterval_minutes = 90\nrecheck_seconds = 600\n")
        d.start()
        try:
            wait_for(lambda: d.vm(ok_vm)["LastSnapshot"] == "0000000001", 120,
                     "the scheduled first sync")
            v = d.vm(ok_vm)
            assert v["NextRun"] == v["LastSync"] + 90 * 60 and v["State"] == SyncState.IDLE
            wait_for(lambda: "last sync failed" in d.vm(no_key)["Reason"], 60, "the failure")
            f = d.vm(no_key)
            assert "no data key" in f["Reason"] and f["LastSync"] == 0
            assert f["NextRun"] >= time.time() + 500  # tried again after recheck_seconds
            assert d.log().count(f"{no_key}: sync failed") == 1
        finally:
            d.stop()
