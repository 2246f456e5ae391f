"""The daemons' method guard (``vmclient.dbus.guard``) on a real dbus-daemon."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus

from vmclient.dbus import names
from vmclient.dbus.guard import Member, install_method_guard
from vmclient.errors import VMClientError
from vmclient.tasks import at_most

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("raised", [VMClientError("refused"), RuntimeError("a bug")],
                         ids=["refused", "bug"])
async def test_a_call_that_ends_after_the_daemon_left_the_bus_is_no_traceback(
        system_bus: PrivateSystemBus, caplog: pytest.LogCaptureFixture,
        raised: Exception) -> None:
    """A daemon stopping while a call runs: the call's error (one of ours, or any) finds
    the connection closed.  The guard says so in one line and sends nothing: no
    traceback, no error escaping its task (which the next start would log as a crash)."""
    caplog.set_level(logging.INFO, logger="vmclient.dbus.guard")
    service = await MessageBus(bus_address=system_bus.address).connect()
    client = await MessageBus(bus_address=system_bus.address).connect()
    entered, go_on = asyncio.Event(), asyncio.Event()
    ended: list[BaseException | None] = []

    async def pause_all(_args: list[Any]) -> list[Any]:
        entered.set()
        await go_on.wait()
        raise raised

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: ended.append(ctx.get("exception")))
    try:
        install_method_guard(service, names.POWER_PATH, names.POWER_IFACE,
                             names.POLKIT_ACTION_POWER_MANAGE,
                             {"PauseAll": Member("pausing every VM", pause_all)})
        await service.request_name(names.BUS_NAME)  # (the bus policy's name for Power)
        call = asyncio.ensure_future(client.call(Message(
            destination=names.BUS_NAME, path=names.POWER_PATH,
            interface=names.POWER_IFACE, member="PauseAll")))
        await at_most(entered.wait(), 10)
        service.disconnect()
        await service.wait_for_disconnect()
        go_on.set()
        for _ in range(50):  # the guard's task runs to its end
            await asyncio.sleep(0.02)
            if "no reply, the bus connection is closed" in caplog.text:
                break
        assert f"PauseAll for {client.unique_name}: no reply, the bus connection is " \
               f"closed ({raised})" in caplog.text, caplog.text
        assert "Traceback" not in caplog.text and "failed" not in caplog.text, caplog.text
        assert ended == [], ended
        call.cancel()
    finally:
        loop.set_exception_handler(None)
        client.disconnect()
