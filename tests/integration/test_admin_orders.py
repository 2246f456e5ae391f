"""`vmclient-admin order … cancel N`, `--dry-run`, `show DEVICE` and WIPE PENDING, against
a laptop's real management agent (local-directory repository, real libvirtd, no VMs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from orders_env import CLI, laptop

from vmclient.admin import keys as admin_keys
from vmclient.store import layout

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_pending_wipe_is_shown_and_can_be_cancelled_before_the_laptop_runs_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = CLI(tmp_path, capsys)
    assert await cli("init") == 0, cli.err
    async with laptop(tmp_path) as lap:
        lap.admin = admin_keys.load(tmp_path / "keys").admin
        agent = await lap.enrol()
        order_file = tmp_path / "repo" / layout.order(lap.device, 1)

        assert await cli("order", "laptop-1", "wipe", "--dry-run") == 0, cli.err
        assert "dry run: would issue order 1" in cli.out and "WIPE" in cli.out
        assert not order_file.exists()
        assert await cli("order", "laptop-1", "wipe", "--yes", "--json") == 0, cli.err
        assert json.loads(cli.out)["seq"] == 1 and json.loads(cli.out)["action"] == "wipe"
        assert await cli("devices") == 0 and "WIPE PENDING" in cli.out, cli.out
        assert await cli("show", "laptop-1") == 0
        assert "state         WIPE PENDING (order 1)" in cli.out, cli.out

        wipe = order_file.read_bytes()
        assert await cli("order", "laptop-1", "cancel", "1", "--dry-run") == 0, cli.err
        assert "dry run: would cancel order 1" in cli.out and order_file.read_bytes() == wipe
        assert await cli("order", "laptop-1", "cancel", "1") == 0, cli.err
        assert "cancelled order 1" in cli.out and "WIPE business VMs" in cli.out
        assert await cli("devices") == 0 and "WIPE PENDING" not in cli.out, cli.out

        await agent.poll()  # the laptop fetches order 1: the cancellation
        [rep] = [r for r in await lap.reports() if r.order == 1]
        assert rep.outcome == "done" and "cancelled by the admin" in rep.detail, rep
        assert not agent.state_file.load().wiped

        assert await cli("order", "laptop-1", "cancel", "1") == 64
        assert "cancelled already" in cli.err, cli.err
        assert await cli("order", "laptop-1", "lock") == 0, cli.err  # numbering goes on: 2
        await agent.poll()
        assert [(r.order, r.outcome) for r in await lap.reports()] == [(1, "done"), (2, "done")]
        assert await cli("order", "laptop-1", "cancel", "2") == 64
        assert "already ran" in cli.err and "too late" in cli.err, cli.err

        assert await cli("show", "laptop-1", "--json") == 0, cli.err
        doc = json.loads(cli.out)
        assert [(o["seq"], o["action"], o["outcome"]) for o in doc["orders"]] == [
            (1, "cancel", "done"), (2, "lock", "done")]
        assert doc["wipe_pending"] == 0 and doc["name"] == "laptop-1"
