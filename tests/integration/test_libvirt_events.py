"""libvirt's event loop and asyncio (vmclient.virt.hypervisor) against the real libvirtd.

libvirt changes its socket's watch from whichever thread makes a call; asyncio allows
loop changes from the loop's thread only.  libvirt-python's ``libvirtaio`` made them
from the worker threads: ``add_reader`` could cancel the reader's handle just as the
loop ran it (a ``TypeError``, "Exception in callback None()", in vmclient-provd's log
while the shell opened its displays under load).  libvirt's own loop runs in its own
thread; the Hypervisor hands domain events to the asyncio loop.
"""

from __future__ import annotations

import json
import sys

from fixtures_virt import URI, Domains

from testlib import run

CHILD = r"""
import asyncio, json, sys, threading, uuid
import libvirt
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
NS = "https://example.org/vmclient-test/events"

async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("message", "?")))
    seen = asyncio.Queue()
    hv = Hypervisor(sys.argv[1], connections=2)
    hv.watch_domains(lambda *a: None,
                     lambda u, n, ns: seen.put_nowait((n, ns, threading.get_ident())))
    await hv.connect()
    for _ in range(5):
        await asyncio.gather(*(hv.call(lambda c: c.getLibVersion(), what="version")
                               for _ in range(20)))
    name = sys.argv[2]
    xml = (f"<domain type='qemu'><name>{name}</name><uuid>{uuid.uuid4()}</uuid>"
           "<memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>")
    await hv.call(lambda c: c.defineXML(xml), what="define")
    try:
        await hv.call(lambda c: c.lookupByName(name).setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, "<x/>", "t", NS,
            libvirt.VIR_DOMAIN_AFFECT_CONFIG), what="metadata")
        got = await asyncio.wait_for(seen.get(), 30)
    finally:
        await hv.call(lambda c: c.lookupByName(name).undefine(), what="undefine")
    await hv.close()
    return {"event": got[:2], "on_loop": got[2] == CheckedLoop.owner}

loop = CheckedLoop()
out = loop.run_until_complete(main())
loop.close()
print(json.dumps({"off_thread": CheckedLoop.off_thread, "errors": errors, **out}))
"""


def test_libvirt_calls_in_worker_threads_leave_the_loop_alone_and_events_reach_it(
        vms: Domains) -> None:
    name = f"{vms.prefix}-ev"  # (the child undefines it; clean-test-domains knows the prefix)
    r = run([sys.executable, "-c", CHILD, URI, name], timeout=90)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    # 100 calls in 10 worker threads: libvirt turned its socket's watch off and on in each
    assert out["off_thread"] == [], out["off_thread"][:5]
    assert out["errors"] == []
    # a domain event comes to the owner's callback on the loop's thread
    assert out["event"] == [name, "https://example.org/vmclient-test/events"], out
    assert out["on_loop"], "the metadata event was handled off the loop's thread"
