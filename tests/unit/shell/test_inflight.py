"""The shell's polls start a call only when the previous one has answered."""

from __future__ import annotations

import pytest

from vmclient.shell.inflight import InFlight


def test_a_poll_waits_for_the_pending_answer_before_asking_again():
    pending: list = []
    answers: list = []
    calls = InFlight()
    assert calls.run(pending.append, lambda *a: answers.append(a))
    # a slow daemon: the next polls start nothing while the first call waits
    assert not calls.run(pending.append, lambda *a: answers.append(a))
    assert not calls.run(pending.append, lambda *a: answers.append(a))
    assert len(pending) == 1
    pending.pop()(["vm"], None)  # the answer
    assert answers == [(["vm"], None)]
    assert calls.run(pending.append, lambda *a: answers.append(a))
    assert len(pending) == 1


def test_a_call_that_cannot_start_does_not_block_the_next():
    calls = InFlight()

    def broken(_finish):
        raise OSError("no bus")
    with pytest.raises(OSError):
        calls.run(broken, lambda *a: None)
    assert calls.run(lambda finish: finish(), lambda *a: None)
    assert not calls.busy
