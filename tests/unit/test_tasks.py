"""vmclient.tasks.all_of: steps run at once; a failure is raised as itself, and only once
every step has ended (a caller cleaning up after it finds nothing still writing).
vmclient.tasks.at_most: a step bounded in time that never loses its caller's
cancellation.  vmclient.tasks.ended: tasks cancelled until they have ended."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from vmclient.errors import VMClientError
from vmclient.tasks import all_of, at_most, ended


def test_the_steps_run_at_once() -> None:
    async def main() -> None:
        both = asyncio.Barrier(2)  # each step waits for the other: sequential would hang
        async with asyncio.timeout(5):
            await all_of(both.wait(), both.wait())
    asyncio.run(main())


def test_a_failure_is_raised_as_itself_after_every_step_ended() -> None:
    finished: list[str] = []

    async def fails() -> None:
        raise VMClientError("the first step failed")

    async def slow(name: str) -> None:
        await asyncio.sleep(0.05)
        finished.append(name)

    async def main() -> None:
        with pytest.raises(VMClientError, match="the first step failed"):
            await all_of(slow("before"), fails(), slow("after"))
        assert sorted(finished) == ["after", "before"]  # not cancelled, not left running
    asyncio.run(main())


def test_the_first_failure_in_the_order_given_wins() -> None:
    async def fails(what: str, delay: float) -> None:
        await asyncio.sleep(delay)
        raise ValueError(what)

    async def main() -> None:
        with pytest.raises(ValueError, match=r"^one$"):
            await all_of(fails("one", 0.05), fails("two", 0))
    asyncio.run(main())


def test_at_most_raises_timeout_and_cancels_the_step() -> None:
    finished: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            finished.append("slow")

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await at_most(slow(), 0.05)
        assert finished == ["slow"]
        assert await at_most(asyncio.sleep(0, "done"), 5) == "done"
    asyncio.run(main())


def test_a_cancellation_as_the_step_completes_is_not_lost() -> None:
    """The task is cancelled in the loop turn its step completes in (a fill told to end as
    its libvirt call returns): it ends cancelled, as ``asyncio.wait_for`` on Python 3.11
    does not (it returns the step's result and the task goes on)."""
    async def main() -> tuple[bool, str]:
        step: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        after: list[str] = []

        async def caller() -> None:
            after.append(await at_most(step, 10))
            await asyncio.sleep(10)  # (what a task that lost its cancellation goes on to)

        task = asyncio.create_task(caller())
        await asyncio.sleep(0)  # the caller waits on its step
        step.set_result("result")
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        was_cancelled = task.cancelled()
        task.cancel()  # (one that went on is told again)
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return was_cancelled, ",".join(after)
    assert asyncio.run(main()) == (True, "")


def test_ended_cancels_again_a_task_that_lost_its_cancellation() -> None:
    """A task that goes on after its first cancellation (one lost on its way) is cancelled
    again until it ends; its error is retrieved, a result of another dropped."""
    async def main() -> list[str]:
        seen: list[str] = []

        async def goes_on() -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                seen.append("lost")
            await asyncio.sleep(10)

        async def fails() -> None:
            raise ValueError("dropped")

        tasks = [asyncio.create_task(goes_on()), asyncio.create_task(fails()),
                 asyncio.create_task(asyncio.sleep(0, "done"))]
        await asyncio.sleep(0.01)
        async with asyncio.timeout(5):
            await ended(*tasks, again=0.05)
        assert [t.done() for t in tasks] == [True] * 3
        assert tasks[0].cancelled()
        return seen
    assert asyncio.run(main()) == ["lost"]
