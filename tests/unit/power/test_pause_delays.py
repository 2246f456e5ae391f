"""powerd's pause delays (the shell's lock before the VMs pause): held until the holder
closes its end, waited for with a bound."""

from __future__ import annotations

import asyncio
import os

import pytest

from vmclient.power.delays import PauseDelays
from vmclient.tasks import at_most


@pytest.mark.asyncio
async def test_no_delay_means_no_wait():
    assert await PauseDelays().released(0.0)


@pytest.mark.asyncio
async def test_the_wait_ends_when_every_holder_closed_its_end():
    delays = PauseDelays()
    shell, other = delays.take("uid 1"), delays.take("uid 2")
    assert delays.held == ["uid 1", "uid 2"]
    waiting = asyncio.ensure_future(delays.released(30))
    await asyncio.sleep(0.05)
    os.close(shell)
    await asyncio.sleep(0.05)
    assert not waiting.done() and delays.held == ["uid 2"]
    os.close(other)  # as when the holder exits
    assert await at_most(waiting, 5) is True
    assert delays.held == []


@pytest.mark.asyncio
async def test_writing_is_not_releasing_and_the_bound_ends_the_wait():
    delays = PauseDelays()
    fd = delays.take("uid 1")
    try:
        os.write(fd, b"locked")
        assert await delays.released(0.2) is False
        assert delays.held == ["uid 1"]
    finally:
        os.close(fd)
    assert await delays.released(5) is True


@pytest.mark.asyncio
async def test_close_lets_every_delay_go():
    delays = PauseDelays()
    fd = delays.take("uid 1")
    delays.close()
    assert delays.held == [] and await delays.released(0)
    assert os.read(fd, 1) == b""  # powerd's end is closed
    os.close(fd)
