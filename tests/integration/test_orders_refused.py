
"""A wipe that is forged, replayed, misaddressed or out of sequence does nothing but a log
line and one ``refused`` report; the business VM keeps running and keeps its key."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import libvirt
import pytest
from orders_env import Laptop, dom_state, has_managed_save, laptop

from vmclient.store import crypto, layout
from vmclient.store.format import signed_envelope
from vmclient.store.orders import Order

pytestmark = pytest.mark.asyncio(loop_scope="session")


def wipe(device: str, seq: int, issued: int) -> Order:
    return Order(device, seq, issued, "wipe", {"include_private": True})


async def put(lap: Laptop, seq: int, blob: bytes) -> None:
    await lap.remote.put_atomic(layout.order(lap.device, seq), blob)


def levels(caplog: pytest.LogCaptureFixture, start: str) -> set[int]:
    """The levels of the agent's log records whose message starts with ``start``."""
    return {r.levelno for r in caplog.records
            if r.name == "vmclient.manage.agent" and r.getMessage().startswith(start)}


async def test_forged_replayed_misaddressed_out_of_sequence_wipes_do_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vmclient")
    async with laptop(tmp_path) as lap:
        agent = await lap.enrol()
        biz = lap.create_vm("biz", "business")
        await agent.start_vm(biz)
        key = lap.cfg.vm_keys_dir / f"{biz}.wrapped"
        dev, now = lap.device, int(lap.clock.wall())
        renew = await lap.order("renew-lease", lease_until=now + 86400 * 30)
        await agent.poll()
        assert agent.state_file.load().last_seq == renew.seq == 1
        assert levels(caplog, "order 1 (renew-lease): done") == {logging.INFO}  # no alarm

        other_device = crypto.key_id(crypto.Ed25519PrivateKey.generate().public_key())
        thief = crypto.Ed25519PrivateKey.generate()
        attempts = {
            # signed by a key that is not the pinned admin key
            "forged": (2, signed_envelope(thief, "order", f"{dev}/2",
                                          wipe(dev, 2, now).to_bytes()), "unknown key"),
            # a genuine wipe for another device, copied into this device's directory
            "misaddressed": (2, signed_envelope(lap.admin, "order", f"{other_device}/2",
                                                wipe(other_device, 2, now).to_bytes()),
                             "bad signature"),
            # a genuine admin-signed wipe whose number this device has used already
            "replayed": (1, signed_envelope(lap.admin, "order", f"{dev}/1",
                                            wipe(dev, 1, now).to_bytes()), "replayed"),
            # a genuine wipe, but order 2 never arrived
            "out of sequence": (3, signed_envelope(lap.admin, "order", f"{dev}/3",
                                                   wipe(dev, 3, now).to_bytes()),
                                "out of sequence (expected 2)"),
        }
        for refused, (what, (seq, blob, problem)) in enumerate(attempts.items(), 1):
            await put(lap, seq, blob)
            await agent.poll()
            await agent.poll()  # reported once, not on every poll
            assert dom_state(biz) == libvirt.VIR_DOMAIN_RUNNING, what
            assert key.exists(), what
            st = agent.status()
            assert (st["last_order"], st["wiped"], st["business_allowed"]) == (1, False, True)
            reports = [r for r in await lap.reports() if r.outcome == "refused"]
            assert len(reports) == refused, (what, reports)
            assert reports[-1].order == 0 and problem in reports[-1].detail, (what, reports[-1])
            assert levels(caplog, f"order {layout.order(dev, seq)} refused") == {logging.WARNING}
            await lap.remote.delete(layout.order(dev, seq))
            if what == "replayed":  # put the genuine order 1 back
                await put(lap, 1, signed_envelope(lap.admin, "order", f"{dev}/1",
                                                  renew.to_bytes()))

        # the genuine next order still works: a lock saves and stops the business VM
        await put(lap, 2, signed_envelope(lap.admin, "order", f"{dev}/2",
                                          Order(dev, 2, now, "lock").to_bytes()))
        await agent.poll()
        assert dom_state(biz) == libvirt.VIR_DOMAIN_SHUTOFF and key.exists()
        assert agent.status()["last_order"] == 2
        save = lap.cfg.save_dir / f"{biz}.save"
        assert has_managed_save(biz) and save.exists()

        # and a genuine wipe of the saved VM: saved RAM overwritten, then removed, key gone
        link = save.with_name(f".{biz}.test-link")  # a second name keeps the inode readable
        os.link(save, link)
        try:
            assert any(link.read_bytes())
            await lap.order("wipe", include_private=False)
            await agent.poll()
            assert not save.exists() and not key.exists() and dom_state(biz) is None
            assert not any(link.read_bytes())  # the bytes were zeroed before the unlink
        finally:
            link.unlink(missing_ok=True)
        assert agent.status()["wiped"]
