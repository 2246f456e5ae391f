"""A domain call handed to its worker thread before what must precede it is done
(vmclient-powerd records a pause while its suspend's thread wakes): the call waits there."""

from __future__ import annotations

import json
import sys

from fixtures_virt import URI

from testlib import run

CHILD = r"""
import asyncio, json, sys
from concurrent.futures import Future
from vmclient.tasks import at_most
from vmclient.errors import VMClientError
from vmclient.virt.hypervisor import Hypervisor

async def main(uri, ok, refused):
    hv = Hypervisor(uri, connections=2)
    await hv.connect()
    out = {}
    first = Future()
    call = asyncio.ensure_future(hv.suspend(ok, "ok", first))
    await asyncio.sleep(0.5)
    out["while_waiting"] = [call.done(), (await hv.domain(ok)).state.name]
    first.set_result(None)
    await at_most(call, 30)
    out["after"] = (await hv.domain(ok)).state.name
    never = Future()
    never.set_exception(VMClientError("not recorded"))
    try:
        await hv.suspend(refused, "refused", never)
        out["refused"] = ["called", (await hv.domain(refused)).state.name]
    except VMClientError as exc:
        out["refused"] = [str(exc), (await hv.domain(refused)).state.name]
    await hv.close()
    return out

print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
"""


def test_a_call_after_a_future_waits_for_it_and_is_not_made_if_it_fails(vms):
    ok, refused = vms.create("ok"), vms.create("refused")
    r = run([sys.executable, "-c", CHILD, URI, ok.UUIDString(), refused.UUIDString()],
            timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == {
        "while_waiting": [False, "RUNNING"], "after": "PAUSED",
        "refused": ["not recorded", "RUNNING"]}
