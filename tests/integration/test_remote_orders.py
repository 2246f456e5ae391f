"""Remote management over a real sshd: enrolment codes, orders, reports and the fleet view
through ``vmclient-admin``; the laptop's agent over its own confined SFTP account."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from remote_env import RemoteLaptop, fleet

from vmclient.cli.main import main as ctl_main
from vmclient.store import crypto, layout
from vmclient.store.errors import StoreError
from vmclient.store.format import signed_envelope
from vmclient.store.orders import Order

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_orders_reports_and_devices_over_sftp_and_no_device_reaches_another(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with fleet(tmp_path, capsys) as (server, admin, dropbox, hv, prefix):
        a = RemoteLaptop("laptop-a", tmp_path / "a", prefix, server, hv)
        b = RemoteLaptop("laptop-b", tmp_path / "b", prefix, server, hv)
        dev_a = await admin.enrol(a, dropbox)
        dev_b = await admin.enrol(b, dropbox)
        assert (await a.poll())["enrolled"] and (await b.poll())["enrolled"]

        # the drop box can deliver a request but not read the others'
        box = server.store(dropbox)
        try:
            with pytest.raises(StoreError, match="enrolment"):
                await box.list("enrolment")
        finally:
            await box.close()

        # orders issued with the CLI reach the laptop over SFTP; reports come back verified
        assert await admin("order", "laptop-a", "renew", "lease_until=+30d") == 0, admin.err
        assert "order 1 for laptop-a" in admin.out
        assert await admin("order", "laptop-a", "lock") == 0, admin.err
        assert await admin("order", "laptop-a", "wipe") == 64  # not without --yes
        assert "--yes" in admin.err
        assert await admin("order", "laptop-a", "renew", "lease_until=soon") == 64
        assert "lease_until" in admin.err
        assert await admin("order", "laptop-z", "lock") == 64
        assert await admin("devices", "--json") == 0
        [view] = [v for v in json.loads(admin.out) if v["device"] == dev_a]
        assert view["pending"] == [1, 2] and view["last_order"] == 0
        assert view["last_contact"] > 0 and view["release"].startswith("vmclient ")  # heartbeat

        status = await a.poll()
        assert status["last_order"] == 2 and status["locked"]
        assert not status["business_allowed"] and status["reports_pending"] == 0
        assert await admin("reports", "laptop-a", "--json") == 0, admin.err
        reports = json.loads(admin.out)
        assert [(r["order"], r["outcome"]) for r in reports] == [(1, "done"), (2, "done")]
        assert "lease renewed" in reports[0]["detail"]
        assert await admin("reports", "laptop-a") == 0
        assert "verified" in admin.out and "business work locked" in admin.out
        assert await admin("devices", "--json") == 0
        [view] = [v for v in json.loads(admin.out) if v["device"] == dev_a]
        assert view["pending"] == [] and view["last_order"] == 2 and view["last_contact"] > 0
        assert view["lease_until"] == status["lease_until"]
        assert await admin("devices") == 0
        assert "laptop-a" in admin.out and "laptop-b" in admin.out

        # a device reaches nothing of another device's, and cannot write its own orders
        store = b.store(attempts=1)
        forged = signed_envelope(crypto.Ed25519PrivateKey.generate(), "order", f"{dev_a}/3",
                                 Order(dev_a, 3, 0, "unlock").to_bytes())
        try:
            for attempt in (store.list(f"devices/{dev_a}/orders"),
                            store.list(f"devices/{dev_a}"),
                            store.get(layout.order(dev_a, 1)),
                            store.get(layout.device_record(dev_a)),
                            store.put_atomic(layout.order(dev_a, 3), forged),
                            store.put_atomic(layout.report(dev_a, 9), forged),
                            store.put_atomic(layout.order(dev_b, 1), forged),
                            store.delete(layout.device_record(dev_b)),
                            store.list("devices")):  # device ids are not enumerable
                with pytest.raises(StoreError):
                    await attempt
            assert await store.get(layout.device_record(dev_b))  # its own: yes
        finally:
            await store.close()
        assert not (server.repo / layout.order(dev_a, 3)).exists()
        assert (server.repo / layout.device_record(dev_b)).exists()

        # vmclientctl on a laptop: enrol through the drop box, then its own account
        c = RemoteLaptop("laptop-c", tmp_path / "c", prefix, server, hv)
        assert await admin("enrol", "--code", "laptop-c") == 0
        code = admin.out.splitlines()[1].strip()
        url = f"sftp://{dropbox.user}@127.0.0.1:{server.port}/"
        common = ["--state-dir", str(c.cfg.state_dir), "--device-dir", str(c.cfg.device_keys_dir),
                  "--known-hosts", str(server.known_hosts)]
        rc = await asyncio.to_thread(ctl_main, [
            "enrol", url, "--dropbox-key", str(dropbox.key_file), "--code", code, "--name",
            "laptop-c", "--admin-key", base64.b64encode(admin.public).decode(), *common])
        assert rc == 0, capsys.readouterr().err
        dev_c = await admin.enrol_accepted(c)
        rc = await asyncio.to_thread(ctl_main, [
            "status", "--repository", f"sftp://{c.account.user}@127.0.0.1:{server.port}/",
            "--json", *common])
        status = json.loads(capsys.readouterr().out)
        assert rc == 0 and status["enrolled"] and status["device"] == dev_c

        # revoking needs the wipe report first (else the laptop could not fetch its wipe)
        assert await admin("devices", "revoke", "laptop-b", "--server-keys",
                           str(server.keys)) == 64
        assert "no verified wipe report" in admin.err
