"""A libvirt call whose caller is cancelled while its worker thread runs (vmclient-powerd
stops during a clock sync after wake): the thread goes on, and when it fails (the VM
was removed meanwhile) its error is dropped, not logged as "Future exception was never
retrieved" with a traceback in the daemon's journal."""

from __future__ import annotations

import json
import sys

from fixtures_virt import URI

from testlib import run

CHILD = r"""
import asyncio, gc, json, sys, threading, uuid
from vmclient.virt.hypervisor import Hypervisor

errors = []

async def main(limit):
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, ctx: errors.append(ctx.get("message", "?")))
    hv = Hypervisor(sys.argv[1], connections=1)
    await hv.connect()
    entered, leave = threading.Event(), threading.Event()

    def lookup(conn):  # a domain that is not there, once the caller has been cancelled
        entered.set()
        leave.wait(10)
        return conn.lookupByUUIDString(str(uuid.uuid4()))

    call = asyncio.create_task(hv.call(lookup, what="look up", vm="gone", limit=limit))
    await asyncio.to_thread(entered.wait, 10)
    call.cancel()
    try:
        await call
    except asyncio.CancelledError:
        pass
    leave.set()
    await asyncio.sleep(0.3)  # the thread's lookup fails meanwhile
    gc.collect()
    await asyncio.sleep(0.05)
    await hv.close()
    return call.cancelled()

out = {}
for limit in (10.0, None):
    errors.clear()
    cancelled = asyncio.run(main(limit))
    gc.collect()
    out[str(limit)] = {"cancelled": cancelled, "errors": list(errors)}
print(json.dumps(out))
"""


def test_a_cancelled_calls_later_error_is_dropped_not_logged() -> None:
    r = run([sys.executable, "-c", CHILD, URI], timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out == {"10.0": {"cancelled": True, "errors": []},
                   "None": {"cancelled": True, "errors": []}}, (out, r.stderr)
