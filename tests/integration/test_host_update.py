"""Host updates end to end with the real ``rauc`` (issue 18): ``vmclient-admin host publish``
and ``order DEVICE host-update``, the laptop's agent and updater (local-directory
repository), Debian's ``rauc service`` with two file-backed slots and the custom
bootloader backend (:mod:`rauc_env`).  No VMs; the booted A/B test host is the system
tests' business."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures_bus import PrivateSystemBus
from orders_env import CLI, laptop
from rauc_env import dm_verity, make_bundle, make_pki, make_rootfs, make_unsigned, rauc_system
from sftp_repo import make_disk

from vmclient.admin import keys as admin_keys
from vmclient.host.keys import pinned_admin_key
from vmclient.manage import hostupdate
from vmclient.manage.hostpolicy import INSTALL, REFUSE, WAIT
from vmclient.manage.hostrestart import NothingToPostpone
from vmclient.shell.bar import sync_text
from vmclient.store.remote import PassOn
from vmclient.store.repo import get_catalog, get_config
from vmclient.sync import config as sconfig
from vmclient.sync.hosting import AgentHost, HostUpdates
from vmclient.sync.service import ManagementInterface, SyncInterface
from vmclient.transport.localfs import LocalDirStore

pytestmark = pytest.mark.asyncio(loop_scope="session")
FMT = "verity" if dm_verity() else "plain"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def updater(lap, agent, rauc, running: str,  # type: ignore[no-untyped-def]
            boot: str = "boot-1") -> hostupdate.HostUpdater:
    cfg = hostupdate.HostConfig(state_dir=lap.cfg.state_dir, data_dir=lap.tmp / "data" / "host")
    return hostupdate.HostUpdater(cfg, lap.remote, pinned_admin_key(lap.cfg.state_dir),
                                  agent.keys.wrapping(), lap.device,
                                  hostupdate.Rauc(conf=rauc.conf, env=rauc.env), running,
                                  boot=lambda: boot)


async def test_an_ordered_host_update_is_downloaded_on_ac_and_installed_into_the_inactive_slot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    with rauc_system(tmp_path / "rauc") as rauc:
        root = make_rootfs(tmp_path / "root-2.0.ext4", "2.0", os.urandom(1 << 20))
        bundle = make_bundle(tmp_path / "b-2.0.raucb", "2.0", root, rauc.cert, rauc.key,
                             rauc.ca, fmt=FMT)
        # the product's format; installed here only where the kernel has dm-verity (FMT)
        verity = make_bundle(tmp_path / "v-2.0.raucb", "2.0", root, rauc.cert, rauc.key,
                             rauc.ca, fmt="verity")
        info = await asyncio.to_thread(subprocess.run, ["rauc", "info", f"--keyring={rauc.ca}",
                                                        str(verity)], capture_output=True,
                                       text=True)
        assert info.returncode == 0 and "Bundle Format: \tverity" in info.stdout, info
        async with laptop(tmp_path) as lap:
            lap.admin = admin_keys.load(tmp_path / "keys").admin
            agent = await lap.enrol()
            assert await cli("host", "publish", str(bundle), "--version", "2.0") == 0, cli.err
            # an image published afterwards keeps the catalog's host section
            assert await cli("publish", "office", str(make_disk(tmp_path / "d.raw", 1))) == 0
            assert await cli("host", "list", "--json") == 0, cli.err
            assert [b["release"] for b in json.loads(cli.out)["bundles"]] == ["2.0"]
            assert await cli("order", "laptop-1", "host-update", "2.0",
                             "maintenance=03:00-03:00") == 64
            assert "maintenance=03:00-03:00: start and end are equal" in cli.err
            assert await cli("order", "laptop-1", "host-update", "2.0",
                             "maintenance=01:00-02:30") == 0, cli.err
            assert "host update to 2.0, restart in 01:00-02:30" in cli.out
            await agent.poll()
            [rep] = await lap.reports()
            assert rep.outcome == "done" and "host update to 2.0" in rep.detail, rep

            up = updater(lap, agent, rauc, "1.0")
            slot_b = digest(rauc.slot_b)
            d = await up.cycle(on_battery=True, metered=False)
            assert (d.action, d.release) == (WAIT, "2.0") and "battery" in d.reason
            d = await up.cycle(on_battery=False, metered=True)
            assert d.action == WAIT and "metered" in d.reason
            assert not (lap.tmp / "data" / "host").exists() or \
                not any((lap.tmp / "data" / "host").glob("bundle-*")), "downloaded on battery"
            assert digest(rauc.slot_b) == slot_b and rauc.primary() == "A"

            d = await up.cycle(on_battery=False, metered=False)
            assert (d.action, d.release) == (INSTALL, "2.0"), d
            rec = hostupdate.load_record(lap.cfg.state_dir)
            assert rec.installed == "2.0" and "installed 2.0" in rec.result, rec
            assert rec.ordered is None
            # the order's window is this laptop's for the restart into 2.0
            assert (rec.ordered_maintenance, rec.window()) == ("01:00-02:30", "01:00-02:30")
            # RAUC wrote the image into the inactive slot B, the custom backend made B primary
            with rauc.slot_b.open("rb") as f:
                assert f.read(root.stat().st_size) == root.read_bytes()
            assert rauc.primary() == "B" and "set-primary B" in rauc.boot_log()
            assert digest(rauc.slot_a) == hashlib.sha256(bytes(8 << 20)).hexdigest()

            # the channel now offers it too: nothing to do, installed, restart pending
            assert await cli("host", "channel", "stable", "2.0", "--rollout", "100") == 0
            installs = rauc.service_log().count("installing `")
            d = await up.cycle(on_battery=False, metered=False)
            assert d.action == "none" and "restart" in d.reason, d
            assert rauc.service_log().count("installing `") == installs
            # the heartbeat carries slot, release, result to the fleet view
            await agent.poll()
            assert await cli("devices", "--json") == 0, cli.err
            [view] = json.loads(cli.out)
            assert view["host"]["slot"] == "A" and view["host"]["installed"] == "2.0"
            assert view["host"]["release"] == "1.0" and "installed 2.0" in view["host"]["result"]
            assert await cli("devices") == 0
            assert "laptop-1: host slot A, release 1.0:" in cli.out, cli.out
            assert await cli("show", "laptop-1") == 0, cli.err
            assert "host update   slot A, running 1.0, 2.0 installed (restart pending): " \
                in cli.out, cli.out
            assert await cli("check", "--read-data") == 0, cli.err + cli.out  # bundles too

            # restarted into 2.0: done, nothing pending (the bar's "restart to update" goes)
            d = await updater(lap, agent, rauc, "2.0", boot="boot-2").cycle(
                on_battery=False, metered=False)
            rec = hostupdate.load_record(lap.cfg.state_dir)
            assert rec.installed == "" and "running 2.0" in rec.result and d.action == "none"
            assert rec.window() == ""  # neither the order's nor (none set) the channel's
            # an order for the release it runs is done with, not kept in the way of the channel
            assert await cli("order", "laptop-1", "host-update", "2.0") == 0, cli.err
            await agent.poll()
            assert hostupdate.load_record(lap.cfg.state_dir).ordered is not None
            d = await updater(lap, agent, rauc, "2.0", boot="boot-2").cycle(
                on_battery=False, metered=False)
            assert d.action == "none" and hostupdate.load_record(lap.cfg.state_dir).ordered is None
            # a damaged record is set aside, not fatal
            (lap.cfg.state_dir / hostupdate.RECORD).write_text("{not json")
            assert hostupdate.load_record(lap.cfg.state_dir) == hostupdate.Record()
            assert (lap.cfg.state_dir / (hostupdate.RECORD + ".damaged")).exists()


async def test_tampered_unsigned_and_downgraded_bundles_never_reach_a_slot(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    with rauc_system(tmp_path / "rauc") as rauc:
        root = make_rootfs(tmp_path / "root.ext4", "3.0", os.urandom(1 << 20))
        good = make_bundle(tmp_path / "good.raucb", "3.0", root, rauc.cert, rauc.key, rauc.ca,
                           fmt=FMT)
        # signed by a CA the laptop's keyring does not hold ("unsigned" for RAUC's purposes),
        # a squashfs with no signature at all, and a signed bundle changed after signing
        other_ca, other_cert, other_key = make_pki(tmp_path / "other-pki", "intruder")
        foreign = make_bundle(tmp_path / "foreign.raucb", "3.1", root, other_cert, other_key,
                              other_ca, fmt=FMT)
        unsigned = make_unsigned(tmp_path / "unsigned.raucb", "3.2", root)
        tampered = tmp_path / "tampered.raucb"
        data = bytearray(good.read_bytes())
        data[len(data) // 3] ^= 1
        tampered.write_bytes(bytes(data))
        async with laptop(tmp_path) as lap:
            lap.admin = admin_keys.load(tmp_path / "keys").admin
            agent = await lap.enrol()
            for release, path in (("3.1", foreign), ("3.2", unsigned), ("3.3", tampered),
                                  ("1.0", good)):
                assert await cli("host", "publish", str(path), "--version", release) == 0, \
                    cli.err
            up = updater(lap, agent, rauc, "2.0")
            before = (digest(rauc.slot_a), digest(rauc.slot_b))

            for release in ("3.1", "3.2", "3.3"):
                assert await cli("order", "laptop-1", "host-update", release) == 0, cli.err
                await agent.poll()
                d = await up.cycle(on_battery=False, metered=False)
                assert (d.action, d.release) == (INSTALL, release)
                rec = hostupdate.load_record(lap.cfg.state_dir)
                assert "failed" in rec.result and "rauc refused" in rec.result, rec
                assert "signature" in rec.result or "Signature" in rec.result, rec
                assert rec.installed == "" and release in rec.failed
            assert (digest(rauc.slot_a), digest(rauc.slot_b)) == before
            assert not [ln for ln in rauc.boot_log() if ln.startswith(("set-primary",
                                                                      "set-state B good"))]
            assert not list((lap.tmp / "data" / "host").glob("bundle-*")), "a refused seed"

            # a downgrade: refused without downgrade=yes, installed with it
            assert await cli("order", "laptop-1", "host-update", "1.0") == 0, cli.err
            await agent.poll()
            d = await up.cycle(on_battery=False, metered=False)
            assert d.action == REFUSE and "downgrade" in d.reason, d
            assert (digest(rauc.slot_a), digest(rauc.slot_b)) == before
            assert await cli("order", "laptop-1", "host-update", "1.0", "downgrade=yes") == 0
            assert "DOWNGRADE" in cli.out
            await agent.poll()
            d = await up.cycle(on_battery=False, metered=False)
            assert d.action == INSTALL, d
            assert hostupdate.load_record(lap.cfg.state_dir).installed == "1.0"
            assert rauc.primary() == "B"
            after = (digest(rauc.slot_a), digest(rauc.slot_b))
            # restarted, but 2.0 still runs: the new slot did not come up, the laptop fell
            # back; reported, and the release is not tried again by itself
            await updater(lap, agent, rauc, "2.0", boot="boot-2").cycle(
                on_battery=False, metered=False)
            rec = hostupdate.load_record(lap.cfg.state_dir)
            assert rec.installed == "" and "1.0 did not boot" in rec.result, rec
            assert "1.0" in rec.failed
            up = updater(lap, agent, rauc, "2.0", boot="boot-2")

            # the repository's copy tampered with: our chunk check refuses it, RAUC never runs
            # (4.0 has the bytes of 1.0: no chunk is uploaded again)
            assert await cli("host", "publish", str(good), "--version", "4.0", "--json") == 0
            assert json.loads(cli.out)["new_chunks"] == 0, cli.out
            for pack in (tmp_path / "repo" / "images" / "host" / "store" / "packs").rglob("*"):
                if pack.is_file():
                    blob = bytearray(pack.read_bytes())
                    blob[100] ^= 1
                    pack.write_bytes(bytes(blob))
            assert await cli("check", "--read-data") == 65, cli.out
            assert "image host: chunk" in cli.out + cli.err, cli.out + cli.err
            for seed in (lap.tmp / "data" / "host").glob("bundle-*"):
                seed.unlink()  # else 1.0's copy on the laptop serves every chunk
            installs = rauc.service_log().count("installing `")
            assert await cli("order", "laptop-1", "host-update", "4.0") == 0, cli.err
            await agent.poll()
            d = await up.cycle(on_battery=False, metered=False)
            rec = hostupdate.load_record(lap.cfg.state_dir)
            assert "failed" in rec.result and "rauc" not in rec.result, rec
            assert rauc.service_log().count("installing `") == installs, "RAUC was called"
            assert (digest(rauc.slot_a), digest(rauc.slot_b)) == after


async def test_syncd_looks_for_host_updates_on_its_cycle_at_most_every_interval(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    with rauc_system(tmp_path / "rauc") as rauc:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", rauc.env["DBUS_SYSTEM_BUS_ADDRESS"])
        root = make_rootfs(tmp_path / "root.ext4", "5.0", os.urandom(1 << 20))
        bundle = make_bundle(tmp_path / "b.raucb", "5.0", root, rauc.cert, rauc.key, rauc.ca,
                             fmt=FMT)
        async with laptop(tmp_path) as lap:
            lap.admin = admin_keys.load(tmp_path / "keys").admin
            agent = await lap.enrol()
            assert await cli("host", "publish", str(bundle), "--version", "5.0", "--channel",
                             "testing", "--rollout", "100") == 0, cli.err
            (tmp_path / "os-release").write_text("ID=debian\nVERSION_ID=bookworm\n")
            now = [1000.0]
            cfg = sconfig.SyncConfig(host_updates=sconfig.HostUpdates(
                channel="testing", data_dir=tmp_path / "host-data", rauc_conf=str(rauc.conf)))
            hook = HostUpdates(cfg, agent, clock=lambda: now[0],
                               os_release=tmp_path / "os-release")
            assert hook.enabled
            await hook.run(on_battery=False, metered=False)  # logged, not fatal
            assert hostupdate.load_record(lap.cfg.state_dir).installed == ""
            now[0] += 601
            (tmp_path / "os-release").write_text('ID=vmclient\nVERSION_ID="4.2"\n')
            await hook.run(on_battery=True, metered=False)
            rec = hostupdate.load_record(lap.cfg.state_dir)
            assert (rec.slot, rec.running, rec.installed) == ("A", "4.2", "")
            await hook.run(on_battery=False, metered=False)  # within the interval: no look
            assert hostupdate.load_record(lap.cfg.state_dir).installed == ""
            now[0] += 3601
            await hook.run(on_battery=False, metered=False)
            assert hostupdate.load_record(lap.cfg.state_dir).installed == "5.0"
            assert rauc.primary() == "B"


class DyingLink(PassOn):
    """Pack reads fail after ``reads`` of them: the link went down mid-download."""

    def __init__(self, inner: LocalDirStore, reads: int) -> None:
        super().__init__(inner)
        self.reads = reads

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        if "/packs/" in path:
            self.reads -= 1
            if self.reads < 0:
                raise ConnectionError("the link went down")
        return await self.inner.get(path, offset, length)


async def test_a_bundle_download_resumes_verifies_what_it_kept_and_fetches_only_changes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    v1 = os.urandom(4 << 20)
    v2 = bytearray(v1)
    v2[1 << 20:(1 << 20) + (256 << 10)] = os.urandom(256 << 10)  # 4 chunks changed
    for release, data in (("1.0", v1), ("1.1", bytes(v2))):
        (tmp_path / release).write_bytes(data)
        assert await cli("host", "publish", str(tmp_path / release), "--version", release,
                         "--json") == 0, cli.err
    assert json.loads(cli.out)["new_chunks"] == 4, cli.out  # only the changed ones uploaded
    k = admin_keys.load(tmp_path / "keys")
    remote = LocalDirStore(tmp_path / "repo")
    pub = k.admin.public_key()
    catalog, _d = await get_catalog(remote, pub, (await get_config(remote, pub)).repository)
    assert catalog.host is not None
    b1, b2 = catalog.host.bundles

    # cut short: the partial file stays; nothing looks complete
    data = tmp_path / "data"
    with pytest.raises(ConnectionError):
        await hostupdate.fetch_bundle(DyingLink(remote, 2), pub, k.escrow, b2, data)
    partial = data / ".bundle-1.1.partial"
    assert partial.exists() and not hostupdate.bundle_path(data, "1.1").exists()
    # a chunk of it damaged meanwhile is not trusted: its HMAC decides
    with partial.open("r+b") as f:
        f.write(b"\xff" * 100)
    got = await hostupdate.fetch_bundle(remote, pub, k.escrow, b2, data)
    assert got.path.read_bytes() == bytes(v2) and not partial.exists()
    assert 0 < got.reused < 64 and got.downloaded < b2.image.size, got

    # with release 1.0 on the laptop, 1.1 costs its 4 changed chunks
    fresh = tmp_path / "fresh"
    full = await hostupdate.fetch_bundle(remote, pub, k.escrow, b1, fresh)
    assert full.downloaded >= len(v1)
    delta = await hostupdate.fetch_bundle(remote, pub, k.escrow, b2, fresh, seeds=(full.path,))
    assert delta.reused == 60 and delta.path.read_bytes() == bytes(v2)
    assert 4 * (64 << 10) <= delta.downloaded <= 6 * (64 << 10), delta


async def test_an_installed_update_restarts_the_laptop_through_logind_in_its_maintenance_window(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        system_bus: PrivateSystemBus) -> None:
    """IT's window from the catalog's channel, the record's installed release, syncd's
    after-cycle hook: logind's Reboot(interactive=false), so systemd stops powerd, which
    saves the VMs (its shutdown path); the Sync properties and the bar say when."""
    logind = system_bus.spawn_mock("logind_vmclient")
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", system_bus.address)
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    (tmp_path / "b.raucb").write_bytes(os.urandom(1 << 16))  # publish does not look inside
    assert await cli("host", "publish", str(tmp_path / "b.raucb"), "--version", "5.0",
                     "--channel", "testing", "--rollout", "100") == 0, cli.err
    assert await cli("host", "channel", "testing", "5.0", "--rollout", "100",
                     "--maintenance", "2:00-4:00") == 64  # EX_USAGE
    assert "--maintenance 2:00-4:00: expected HH:MM-HH:MM" in cli.err
    assert await cli("host", "channel", "testing", "5.0", "--rollout", "100",
                     "--maintenance", "22:30-04:30") == 0, cli.err
    assert "restarting at 22:30-04:30 (local time)" in cli.err + cli.out
    async with laptop(tmp_path) as lap:
        lap.admin = admin_keys.load(tmp_path / "keys").admin
        agent = await lap.enrol()
        assert sconfig.HostUpdates().wait_for_idle  # the shell sets IdleHint
        cfg = sconfig.SyncConfig(host_updates=sconfig.HostUpdates(
            channel="testing", data_dir=tmp_path / "host-data", wait_for_idle=False))
        # the catalog look of a cycle records the channel's window
        up = hostupdate.HostUpdater(hostupdate.HostConfig(
            lap.cfg.state_dir, tmp_path / "host-data", "testing"), lap.remote,
            pinned_admin_key(lap.cfg.state_dir), agent.keys.wrapping(), lap.device,
            hostupdate.Rauc(), "4.2", boot=lambda: "boot-1")
        await up.section()
        rec = hostupdate.load_record(lap.cfg.state_dir)
        assert rec.maintenance == "22:30-04:30"
        iface = SyncInterface()
        host = AgentHost(cfg, lap.hv, agent, iface, ManagementInterface())
        now = [datetime(2026, 12, 7, 12, 0)]
        boot = ["boot-1"]
        host.host_updates = HostUpdates(cfg, agent, local_now=lambda: now[0],
                                        boot=lambda: boot[0])
        assert host.host_updates.enabled
        ac, battery = SimpleNamespace(on_battery=False), SimpleNamespace(on_battery=True)

        def reboots() -> list[list[bool]]:
            return [list(args) for _t, args in logind.GetMethodCalls("Reboot")]

        await host.after_cycle(False, ac)  # nothing installed
        assert (iface.host_update, iface.host_restart_at, reboots()) == ("", 0, [])
        hostupdate.save_record(lap.cfg.state_dir, replace(rec, installed="5.0", boot="boot-1"))
        await host.after_cycle(False, ac)  # installed; outside the window: tonight
        tonight = int(datetime(2026, 12, 7, 22, 30).timestamp())
        assert (iface.host_update, iface.host_restart_at, reboots()) == ("5.0", tonight, [])
        assert "restart to update (automatic at " in sync_text(iface.values(), now=now[0].timestamp())
        now[0] = datetime(2026, 12, 8, 1, 0)  # in the window, past midnight
        await host.after_cycle(False, battery)
        assert reboots() == []  # waits for AC
        # the window's start is past: the bar says what it waits for, not a past time
        assert sync_text(iface.values(), now=now[0].timestamp()).endswith(
            "restart to update (automatic when on AC power)")
        plain = host.host_updates
        idle_cfg = sconfig.SyncConfig(host_updates=replace(cfg.host_updates, wait_for_idle=True))
        host.host_updates = HostUpdates(idle_cfg, agent, local_now=lambda: now[0],
                                        boot=lambda: boot[0])
        await host.after_cycle(False, ac)
        assert reboots() == []  # logind's IdleHint is false: someone uses the laptop
        system_bus.connection().get_object("org.freedesktop.login1", "/org/freedesktop/login1").Set(
            "org.freedesktop.login1.Manager", "IdleHint", True,
            dbus_interface="org.freedesktop.DBus.Properties")
        await host.after_cycle(False, ac)
        assert reboots() == [[False]]  # idle now
        logind.ClearCalls()
        host.host_updates = plain
        await host.after_cycle(False, ac)
        assert reboots() == [[False]]  # Reboot(interactive=false)
        assert iface.host_restart_at == tonight
        boot[0] = "boot-2"  # restarted (the next look clears the record): no second reboot
        await host.after_cycle(False, ac)
        assert (iface.host_restart_at, reboots()) == (0, [[False]])
        boot[0] = "boot-1"
        assert await cli("host", "channel", "testing", "5.0", "--rollout", "100",
                         "--maintenance", "none") == 0, cli.err
        await up.section()
        assert hostupdate.load_record(lap.cfg.state_dir).maintenance == ""
        await host.after_cycle(False, ac)  # IT removed the window: only the user restarts
        assert (iface.host_restart_at, reboots()) == (0, [[False]])
        assert sync_text(iface.values()).endswith("\u00b7 restart to update")
        # a host-update order's window (recorded with the install) is this laptop's own
        rec = hostupdate.load_record(lap.cfg.state_dir)
        hostupdate.save_record(lap.cfg.state_dir, replace(rec, ordered_maintenance="00:30-01:30"))
        await host.after_cycle(False, ac)
        assert reboots() == [[False], [False]]
        # the user's "Later" (PostponeHostRestart(0)): past this window, kept by a syncd
        # restart; no Reboot until the next night's window
        later = host.postpone_restart(0)
        assert later == iface.host_restart_at == int(datetime(2026, 12, 9, 0, 30).timestamp())
        host.host_updates = HostUpdates(cfg, agent, local_now=lambda: now[0],
                                        boot=lambda: boot[0])
        await host.after_cycle(False, ac)
        assert (iface.host_restart_at, len(reboots())) == (later, 2)
        assert "(automatic at " in sync_text(iface.values(), now=now[0].timestamp())
        # "Later" again: one more night
        assert host.postpone_restart(0) == int(datetime(2026, 12, 10, 0, 30).timestamp())
        now[0] = datetime(2026, 12, 9, 0, 30)
        await host.after_cycle(False, ac)
        assert len(reboots()) == 2
        now[0] = datetime(2026, 12, 10, 0, 30)
        await host.after_cycle(False, ac)
        assert len(reboots()) == 3
        boot[0] = "boot-3"  # restarted: nothing left to postpone
        with pytest.raises(NothingToPostpone, match="no host update waits for a restart"):
            host.postpone_restart(0)
