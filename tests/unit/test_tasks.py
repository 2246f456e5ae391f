"""vmclient.tasks.all_of: steps run at once; a failure is raised as itself, and only once
every step has ended (a caller cleaning up after it finds nothing still writing)."""

from __future__ import annotations

import asyncio

import pytest

from vmclient.errors import VMClientError
from vmclient.tasks import all_of


def test_the_steps_run_at_once() -> None:
    async def main() -> None:
        both = asyncio.Barrier(2)  # each step waits for the other: sequential would hang
        async with asyncio.timeout(5):
            await all_of(both.wait(), both.wait())
    asyncio.run(main())


def test_a_failure_is_raised_as_itself_after_every_step_ended() -> None:
    ended: list[str] = []

    async def fails() -> None:
        raise VMClientError("the first step failed")

    async def slow(name: str) -> None:
        await asyncio.sleep(0.05)
        ended.append(name)

    async def main() -> None:
        with pytest.raises(VMClientError, match="the first step failed"):
            await all_of(slow("before"), fails(), slow("after"))
        assert sorted(ended) == ["after", "before"]  # not cancelled, not left running
    asyncio.run(main())


def test_the_first_failure_in_the_order_given_wins() -> None:
    async def fails(what: str, delay: float) -> None:
        await asyncio.sleep(delay)
        raise ValueError(what)

    async def main() -> None:
        with pytest.raises(ValueError, match=r"^one$"):
            await all_of(fails("one", 0.05), fails("two", 0))
    asyncio.run(main())
