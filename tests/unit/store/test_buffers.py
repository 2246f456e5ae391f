"""store.buffers: while a transfer runs, big buffers freed are reused, not faulted in again."""

from __future__ import annotations

import resource

import pytest

from vmclient.store import buffers

SIZE = 8 << 20  # above glibc's 128 KiB mmap threshold, below the transfer one


def faults_for(rounds: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        b = bytearray(SIZE)  # zero-filled: every page touched
        del b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(buffers._LIBC is None, reason="not glibc: nothing to tune")
def test_buffers_freed_during_a_transfer_are_reused() -> None:
    with buffers.steady():
        pass  # ended: glibc's initial fixed thresholds, every big buffer mapped afresh
    outside = faults_for(8)
    with buffers.steady(), buffers.steady():  # nested, as a sync inside a daemon's transfer
        faults_for(1)  # the heap grows once
        inside = faults_for(8)
    assert outside > 8 * (SIZE >> 12) // 2  # about one fault per page of every buffer
    assert inside < outside // 10
