"""Enrolment with a one-time code against a local-directory repository: a wrong, reused,
expired or shared code is refused; the right one enrols and pins the admin key."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from testlib import vmclientctl
from vmclient.errors import ConfigError
from vmclient.host.inventory import ManageConfig
from vmclient.manage import admin as it
from vmclient.manage.agent import Agent
from vmclient.manage.enrol import CodeBook, process_requests, request_path
from vmclient.store import crypto, layout
from vmclient.store.errors import RemoteIntegrityError
from vmclient.tasks import at_most
from vmclient.transport.localfs import LocalDirStore
from vmclient.virt.libvirt import Hypervisor

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOW = 1_764_000_000


class Site:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.remote = LocalDirStore(tmp / "repo")
        self.admin = crypto.Ed25519PrivateKey.generate()
        self.book = CodeBook(tmp / "admin" / "codes.json")

    def laptop(self, name: str) -> Agent:
        cfg = ManageConfig(state_dir=self.tmp / name, vm_keys_dir=self.tmp / name / "vmkeys",
                           images_dir=self.tmp / name / "images", name_prefix="vmct-none-")
        # the hypervisor is never connected: enrolment does not touch VMs
        return Agent(cfg, self.remote, Hypervisor("qemu:///system"), wall=lambda: NOW)

    async def request(self, laptop: Agent, code: str) -> str:
        return await laptop.request_enrolment(crypto.raw_public(self.admin.public_key()),
                                              laptop.cfg.state_dir.name, code)

    async def process(self, now: int = NOW) -> dict[str, str]:
        return {o.device: o.detail for o in
                await process_requests(self.remote, self.admin, self.book, now)}


async def test_enrolment_needs_a_valid_unused_code(tmp_path: Path) -> None:
    tmp = tmp_path
    site = Site(tmp)
    code = site.book.issue("laptop-a", NOW)
    a, stranger = site.laptop("a"), site.laptop("stranger")

    # a stranger guessing a code is refused, and its request is removed
    s = await site.request(stranger, "AAAA-BBBB-CCCC-DDDD")
    assert await site.process() == {s: "wrong enrolment code"}
    assert not (tmp / "repo" / request_path(s)).exists()
    assert not await stranger.complete_enrolment()

    # the right code enrols; the device record is admin-signed; the lease starts
    dev = await site.request(a, code.lower().replace("-", " "))  # typed sloppily
    assert await site.process() == {dev: "enrolled as laptop-a"}
    assert await a.complete_enrolment()
    st = a.status()
    assert st["enrolled"] and st["device"] == dev and st["lease_remaining"] == 14 * 86400
    rec = await it.device_record(site.remote, site.admin.public_key(), dev)
    assert rec.name == "a"
    assert (a.cfg.device_keys_dir / "signing.key").stat().st_mode & 0o777 == 0o600
    assert a.cfg.device_keys_dir.stat().st_mode & 0o777 == 0o700

    # the same code again (another laptop) is refused
    b = site.laptop("b")
    dev_b = await site.request(b, code)
    assert await site.process() == {dev_b: "enrolment code already used (by " + dev + ")"}
    assert not await b.complete_enrolment()
    assert not (tmp / "repo" / layout.device_record(dev_b)).exists()

    # an expired code, and two requests racing with one code (one of them a copy the
    # server made with its own keys), are refused
    late = site.book.issue("laptop-c", NOW - 8 * 86400)
    c = site.laptop("c")
    dev_c = await site.request(c, late)
    assert await site.process() == {dev_c: "enrolment code expired"}
    shared = site.book.issue("laptop-d", NOW)
    d1, d2 = site.laptop("d1"), site.laptop("d2")
    r1, r2 = await site.request(d1, shared), await site.request(d2, shared)
    out = await site.process()
    assert set(out) == {r1, r2} and all("same code" in v for v in out.values())

    # a device record signed by another key is not accepted by the laptop
    thief = crypto.Ed25519PrivateKey.generate()
    e = site.laptop("e")
    dev_e = await e.request_enrolment(crypto.raw_public(site.admin.public_key()), "e",
                                      site.book.issue("laptop-e", NOW))
    from vmclient.store.orders import DeviceRecord
    from vmclient.store.repo import put_signed
    signing = e.keys.signing().public_key()
    rec_e = DeviceRecord(dev_e, "e", crypto.raw_public(signing),
                         crypto.raw_public(e.keys.wrapping().public_key()), NOW)
    await put_signed(site.remote, layout.device_record(dev_e), thief, ("device", dev_e),
                     rec_e.to_bytes(), exclusive=False)
    with pytest.raises(RemoteIntegrityError, match="unknown key"):
        await e.complete_enrolment()
    assert not e.status()["enrolled"]

    # a request whose signature does not match its keys is refused as malformed
    (tmp / "repo" / request_path(dev_e)).write_bytes(
        (tmp / "repo" / request_path(dev_e)).read_bytes()[:-3] + b"xx}")
    out = await site.process()
    assert len(out) == 1 and next(iter(out.values())).startswith("malformed request")

    # a laptop that never enrolled has no admin key pinned
    with pytest.raises(ConfigError, match="no admin key pinned"):
        from vmclient.host.keys import pinned_admin_key
        pinned_admin_key(tmp / "nowhere")


async def test_vmclientctl_enrol_status_and_the_order_loop(tmp_path: Path) -> None:
    site = Site(tmp_path)
    code = site.book.issue("laptop-f", NOW)
    state = str(tmp_path / "f")
    admin_b64 = base64.b64encode(crypto.raw_public(site.admin.public_key())).decode()
    r = vmclientctl("enrol", str(tmp_path / "repo"), "--admin-key", admin_b64, "--code", code,
                    "--name", "f", "--state-dir", state, "--device-dir", f"{state}/keys")
    assert r.returncode == 0 and "enrolment requested" in r.stdout, r.stderr
    r = vmclientctl("status", "--state-dir", state, "--device-dir", f"{state}/keys")
    assert "waiting for IT" in r.stdout, r.stdout + r.stderr
    await site.process()
    r = vmclientctl("status", "--repository", str(tmp_path / "repo"), "--state-dir", state, "--device-dir", f"{state}/keys",
                    "--json")
    st = json.loads(r.stdout)
    assert st["enrolled"] and st["business_allowed"] and st["lease_remaining"] > 13 * 86400
    r = vmclientctl("enrol", str(tmp_path / "repo"), "--admin-key", "AAAA", "--code", code,
                    "--name", "f", "--state-dir", state, "--device-dir", f"{state}/keys")
    assert r.returncode == 64 and "--admin-key" in r.stderr

    async def loop() -> None:  # the daemon's loop picks up a renewal and reports it
        agent = site.laptop("f")  # its clock says NOW, but the trusted time is today's
        until = int(time.time()) + 40 * 86400
        order = await it.issue_order(site.remote, site.admin, st["device"], "renew-lease",
                                     {"lease_until": until}, NOW,
                                     numbers=it.OrderNumbers(site.tmp / "admin" / "orders.json"))
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop, interval=0.05))
        for _ in range(100):
            if await it.reports_of(site.remote, site.admin.public_key(), st["device"]):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await at_most(task, 5)
        [rep] = await it.reports_of(site.remote, site.admin.public_key(), st["device"])
        assert (rep.order, rep.outcome) == (order.seq, "done")
        assert agent.status()["lease_until"] == until
    await loop()


async def test_a_refused_request_is_told_to_the_laptop_and_the_next_one_answered_anew(
        tmp_path: Path) -> None:
    """IT's refusal reaches the laptop (admin-signed, naming the request it answers): the
    laptop is not enrolling any more and keeps IT's reason; its next request (the same
    device) is not taken as refused by the old answer, and its enrolment removes it."""
    from vmclient.manage.enrol import refusal_path
    from vmclient.store.repo import put_signed

    site = Site(tmp_path)
    clock = [NOW]
    cfg = ManageConfig(state_dir=tmp_path / "a", vm_keys_dir=tmp_path / "a" / "vmkeys",
                       images_dir=tmp_path / "a" / "images", name_prefix="vmct-none-")
    a = Agent(cfg, site.remote, Hypervisor("qemu:///system"), wall=lambda: clock[0])
    dev = await site.request(a, "AAAA-BBBB-CCCC-DDDD")
    assert await a.enrolment_refused() == ""  # pending: IT has not answered
    assert a.state_file.load().device == dev
    assert await site.process() == {dev: "wrong enrolment code"}
    refusal = tmp_path / "repo" / refusal_path(dev)
    assert refusal.exists() and dev not in refusal.name  # its name hides the device id
    state = str(cfg.state_dir)
    r = vmclientctl("status", "--state-dir", state, "--device-dir", state + "/keys")
    assert "waiting for IT" in r.stdout, r.stdout + r.stderr  # not asked: not known yet
    # vmclientctl status asks the repository: IT's answer is a refusal, and why
    r = vmclientctl("status", "--repository", str(tmp_path / "repo"), "--state-dir", state,
                    "--device-dir", state + "/keys")
    assert r.stdout.strip() == ("not enrolled: IT refused the last request (wrong enrolment "
                                "code); vmclientctl enrol … with the code IT gives you"), \
        r.stdout + r.stderr
    st = a.state_file.load()
    assert (st.device, st.enrolled, st.refused) == ("", False, "wrong enrolment code")
    assert await a.enrolment_refused() == ""  # told once: not enrolling any more
    assert a.status()["refused"] == "wrong enrolment code"

    # the code again, right this time: the same device, a new request; the old
    # refusal is not its answer, and IT's enrolment removes it
    clock[0] += 60
    code = site.book.issue("laptop-a", clock[0])
    assert await site.request(a, code) == dev
    assert a.state_file.load().refused == ""
    assert await a.enrolment_refused() == ""
    assert a.state_file.load().device == dev
    assert await site.process(clock[0]) == {dev: "enrolled as laptop-a"}
    assert not refusal.exists()
    assert await a.complete_enrolment()

    # a refusal signed by another key than the admin's is not believed
    b = site.laptop("b")
    dev_b = await site.request(b, "AAAA-BBBB-CCCC-DDDD")
    from vmclient.manage.enrol import Refusal
    thief = crypto.Ed25519PrivateKey.generate()
    await put_signed(site.remote, refusal_path(dev_b), thief, ("enrolment-refusal", dev_b),
                     Refusal(dev_b, NOW, "wrong enrolment code").to_bytes())
    with pytest.raises(RemoteIntegrityError, match="unknown key"):
        await b.enrolment_refused()
    assert b.state_file.load().device == dev_b
