"""store.buffers: while a transfer runs, big buffers freed are reused, not faulted in again.

glibc's malloc tuning is the process's: measured in a new process, so no transfer that
another test left running in this one (its ``steady()`` still open) keeps the tuning on
while "outside" is measured."""

from __future__ import annotations

import json
import sys

import pytest

from testlib import run
from vmclient.store import buffers

SIZE = 8 << 20  # above glibc's 128 KiB mmap threshold, below the transfer one

CHILD = r"""
import json, resource, sys
from vmclient.store import buffers
SIZE = int(sys.argv[1])

def faults_for(rounds):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        b = bytearray(SIZE)  # zero-filled: every page touched
        del b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

with buffers.steady():
    pass  # ended: glibc's initial fixed thresholds, every big buffer mapped afresh
outside = faults_for(8)
with buffers.steady(), buffers.steady():  # nested, as a sync inside a daemon's transfer
    faults_for(1)  # the heap grows once
    inside = faults_for(8)
print(json.dumps({"outside": outside, "inside": inside}))
"""


@pytest.mark.skipif(buffers._LIBC is None, reason="not glibc: nothing to tune")
def test_buffers_freed_during_a_transfer_are_reused() -> None:
    r = run([sys.executable, "-c", CHILD, str(SIZE)], timeout=60)  # sources on PYTHONPATH
    assert r.returncode == 0, r.stderr
    faults = json.loads(r.stdout.splitlines()[-1])
    assert faults["outside"] > 8 * (SIZE >> 12) // 2, faults  # about one per page of each
    assert faults["inside"] < faults["outside"] // 10, faults
