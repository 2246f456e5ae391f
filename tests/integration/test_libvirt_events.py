"""libvirt's event loop on asyncio (vmclient.virt.events) against the real libvirtd.

libvirt changes its socket's watch from whichever thread makes a call; asyncio
allows loop changes from the loop's thread only.  Done from a worker thread,
``add_reader`` could cancel the reader's handle just as the loop ran it: a
``TypeError`` ("Exception in callback None()") in vmclient-provd's log while
the shell opened its displays under load (test_shell.py's first test).
"""

from __future__ import annotations

import json
import sys

from fixtures_virt import URI

from testlib import run

CHILD = r"""
import asyncio, json, sys, threading
from vmclient.virt.hypervisor import Hypervisor

class CheckedLoop(asyncio.SelectorEventLoop):
    # Every change of the loop's readers, writers and callbacks, made off its thread.
    owner = threading.get_ident()
    off_thread = []

    def _note(self, what):
        if threading.get_ident() != self.owner:
            self.off_thread.append(what + " from " + threading.current_thread().name)

for name in ("add_reader", "remove_reader", "add_writer", "remove_writer", "call_soon",
             "call_at"):
    def wrap(name=name):
        base = getattr(asyncio.SelectorEventLoop, name)
        def checked(self, *args, **kwargs):
            self._note(name)
            return base(self, *args, **kwargs)
        return checked
    setattr(CheckedLoop, name, wrap())

errors = []

async def main():
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, ctx: errors.append(ctx.get("message", "?")))
    hv = Hypervisor(sys.argv[1], connections=2)
    hv.watch_domains(lambda *a: None, lambda *a: None)
    await hv.connect()
    for _ in range(5):
        await asyncio.gather(*(hv.call(lambda c: c.getLibVersion(), what="version")
                               for _ in range(20)))
    await hv.close()
    try:
        from vmclient.virt.events import current
    except ImportError:  # libvirt-python's libvirtaio (before vmclient.virt.events)
        return None
    return current().is_idle()

loop = CheckedLoop()
idle = loop.run_until_complete(main())
loop.close()
print(json.dumps({"off_thread": CheckedLoop.off_thread, "errors": errors, "idle": idle}))
"""


def test_libvirt_calls_in_worker_threads_change_the_loop_only_from_its_thread():
    r = run([sys.executable, "-c", CHILD, URI], timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    # 100 calls in 10 worker threads: libvirt turned its socket's watch off and on in each
    assert out["off_thread"] == [], out["off_thread"][:5]
    assert out["errors"] == []
    assert out["idle"], "a watch or timer of the closed connections was never freed"
