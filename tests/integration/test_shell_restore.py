"""The shell's "Restore…" on a new laptop: the VMs the datacenter keeps for it, one press
and the VM runs while its disk streams in (vmclient-shell on a headless Weston, the real
vmclient-provd against the real SFTP repository, real libvirt/QEMU and nbdkit)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest
from dbus_fast.aio import MessageBus
from fixtures_virt import open_libvirt
from provd_harness import ProvDaemon, call, ok
from provision_env import need_tools, set_lease
from shell_harness import (
    HEIGHT,
    WIDTH,
    ShellUnderTest,
    Weston,
    need_desktop,
    stop_desk,
    wait_for,
)
from stream_env import Streamed, disk_bytes, give_to, put_vm_snapshot, streamed

from vmclient.store import layout

pytestmark = pytest.mark.asyncio(loop_scope="session")
ACTION = "org.vmclient.VMClient1.open-display"
KEY_ESC, KEY_ENTER, KEY_M, KEY_DOWN = 1, 28, 50, 108  # evdev's
FILLING = r"{} runs; (\d+)% of its disk is here"


@contextlib.asynccontextmanager
async def restore_page(system_bus, tmp_path: Path, s: Streamed
                       ) -> AsyncIterator[tuple[ProvDaemon, MessageBus, ShellUnderTest]]:
    """provd filling at 0.1 MiB/s (8 MiB take > 60 s: still filling when looked at), a
    client on the bus, and the shell on Weston with its restore page open; all stopped
    after, and neither daemon's log holds a traceback."""
    s.config.write_text(re.sub(r"(?m)^fill_mib_s = .*$", "fill_mib_s = 0.1",
                               s.config.read_text()))
    provd = ProvDaemon(system_bus, tmp_path, s.config)
    client = await MessageBus(bus_address=system_bus.address).connect()
    weston = shell = None
    try:
        provd.start()
        weston = Weston()
        shell = ShellUnderTest(weston, system_bus, tmp_path, s.env.prefix + "-",
                               groups=("vmclient",))
        assert shell.ask("click restore") == {"ok": True}
        yield provd, client, shell
    finally:
        client.disconnect()
        stop_desk(shell, weston, provd)
    assert "Traceback" not in shell.log(), shell.log()
    assert "Traceback" not in provd.log(), provd.log()


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_desktop("nbdkit")
    need_tools("dbus-daemon")


async def test_the_restore_page_offers_the_vms_not_here_and_one_press_runs_one_as_it_streams(
        system_bus, tmp_path):
    """Two VMs in the datacenter for this laptop; the bar menu's "Restore a VM…" lists both with the
    time of their snapshot; a press while the lease has run out is refused in words; a
    press with the lease back: provd's streamed restore, the VM runs and the
    shell shows it, and the page and the bar show how far its disk is while it fills
    (0.1 MiB/s: 8 MiB take > 60 s, still filling when looked at).  Opened again, the page
    offers only the other: a VM on the laptop is never offered (nor by provd)."""
    polkit = system_bus.spawn_mock("polkitd")  # the seat's user: in the vmclient group
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.provision.manage"])
    async with streamed(tmp_path) as s:
        crm, hr = s.env.name("crm"), s.env.name("hr")
        await put_vm_snapshot(s.env, s.server.repo, crm, disk_bytes(8), s.keys)
        await put_vm_snapshot(s.env, s.server.repo, hr, disk_bytes(1, seed=3), s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        conn = open_libvirt()
        try:
            async with restore_page(system_bus, tmp_path, s) as (_provd, client, shell):

                def offered() -> list[str]:
                    st = shell.ask("state")["restore"]
                    assert st["open"] and st["page"] == "restore", st
                    return list(st["offers"]) if not st["message"].startswith("Asking") else []
                offers = wait_for(offered, 30, "the VMs the datacenter keeps for this laptop")
                assert [o.split(" (")[0] for o in offers] == [f"Restore {crm}", f"Restore {hr}"]
                assert all(" (saved today " in o for o in offers), offers
                # the lease run out: refused, in words saying what to do; nothing is left of it
                set_lease(s.env.cfg.manage_dir, days=-1)
                assert shell.ask(f"restore {hr}") == {"ok": True}
                refused = f"{hr} was not restored: it may not run on this laptop now: the lease"
                wait_for(lambda: shell.ask("state")["restore"]["message"].startswith(refused), 30,
                         "the refusal said")
                st = shell.ask("state")
                assert "connect to the datacenter to renew it" in st["restore"]["message"], st
                assert st["action_message"] == st["restore"]["message"] and st["restore"]["open"]
                set_lease(s.env.cfg.manage_dir, days=14)
                t0 = time.monotonic()
                assert shell.ask(f"restore {crm}") == {"ok": True}

                def runs_and_shown() -> bool:
                    st = shell.ask("state")
                    return bool(st["current"] == crm and [crm, "business", "running"] in st["vms"]
                                and st["action_message"].startswith(f"{crm} runs while its disk")
                                and st["display"] is not None)  # its SPICE widget, mapped
                wait_for(runs_and_shown, 60, "the restored VM running and shown")
                running_s = time.monotonic() - t0
                dom = conn.lookupByName(crm)
                assert dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING
                st = shell.ask("state")
                assert not st["restore"]["open"] and st["bar"][0] == f"{crm} \u2014 business", st

                def filling() -> int | None:
                    st = shell.ask("state")
                    seen = [int(m[1]) for t in st["restore_progresses"]
                            if (m := re.search(FILLING.format(crm), t))]
                    bar = [t for t in st["installs"] if t.startswith(f"Restoring {crm}: filling")]
                    return (seen[-1] + 1) if seen and bar else None
                percent = wait_for(filling, 30, "the fill's progress on the page and the bar") - 1
                assert 0 <= percent < 100, percent
                # opened again: only the VM not here
                assert shell.ask("click restore") == {"ok": True}
                offers = wait_for(offered, 30, "the list again")
                assert [o.split(" (")[0] for o in offers] == [f"Restore {hr}"], offers
                (rows,) = ok(await call(client, "ListRestorable"))
                assert [r[0] for r in rows if r[0].startswith(s.env.prefix)] == [hr], rows
                assert re.search(FILLING.format(crm), shell.ask("state")["restore"]["progress"])
                ok(await call(client, "Remove", "s", [crm]))  # its fill and nbdkit stop too
                assert shell.ask("state")["min_width"] <= WIDTH
        finally:
            conn.close()
        print(f"restore pressed to VM shown: {running_s:.1f} s")


async def test_on_a_1024_px_screen_the_bar_shows_the_vms_name_and_its_fill_whole(
        system_bus, tmp_path):
    """A 1024x768 laptop screen, a VM restored from the datacenter shown while its disk
    fills: the bar's title ("crm — business") and its progress ("Restoring crm: filling
    its disks N%") are whole, neither ellipsized nor narrower than their text (the bar's
    buttons once took the width: "vm…", "Res…"), and the window asks for no more than
    the screen.  The screen is kept as ``bar-1024.png`` in the test's directory."""
    polkit = system_bus.spawn_mock("polkitd")
    polkit.SetAllowed([ACTION, "org.vmclient.VMClient1.provision.manage"])
    async with streamed(tmp_path) as s:
        crm = s.env.name("crm")
        await put_vm_snapshot(s.env, s.server.repo, crm, disk_bytes(8), s.keys)
        give_to(s.account, s.server.repo / layout.device_dir(s.env.device.device_id()))
        async with restore_page(system_bus, tmp_path, s) as (_provd, client, shell):
            wait_for(lambda: any(o.startswith(f"Restore {crm} ") for o in
                                 shell.ask("state")["restore"]["offers"]), 30, "the offer")
            assert shell.ask(f"restore {crm}") == {"ok": True}

            def shown_filling() -> dict | None:
                st = shell.ask("state")
                return st if (st["current"] == crm and st["display"] is not None
                              and st["bar"][0] == f"{crm} \u2014 business"
                              and st["installs"][-1:] != []
                              and re.fullmatch(rf"Restoring {crm}: filling its disks \d+%",
                                               st["installs"][-1])) else None
            wait_for(shown_filling, 60, "the restored VM shown, its disk filling")
            await asyncio.sleep(1)  # a frame drawn with both texts (GTK lays out before it paints)
            st = shell.ask("state")
            assert re.fullmatch(rf"Restoring {crm}: filling its disks \d+%",
                                st["installs"][-1]), st["installs"]
            screen = shell.weston.screenshot()
            assert (screen.width, screen.height) == (WIDTH, HEIGHT)
            screen.save(tmp_path / "bar-1024.png")
            print(f"the screen: {tmp_path / 'bar-1024.png'}; the bar: {st['fit']}")
            for field in ("title", "install"):  # [ellipsized, allocated, text's width]
                ellipsized, allocated, text = st["fit"][field]
                assert not ellipsized and allocated >= text, (field, st["fit"], st["bar"])
            assert st["min_width"] <= WIDTH, st
            assert st["keys_to"] == "display", st  # the VM's
            # Super+M: the bar's menu has the keys (shot too); Escape: the VM has them again
            shell.key(KEY_M, "m", "super")
            wait_for(lambda: (now := shell.ask("state"))["keys_to"] == "install"
                     and now["menu"], 10, "the menu open")
            await asyncio.sleep(1)  # its popover faded in
            shell.weston.screenshot().save(tmp_path / "bar-1024-menu.png")
            shell.key(KEY_ESC, "Escape")
            wait_for(lambda: (now := shell.ask("state"))["keys_to"] == "display"
                     and not now["menu"], 10, "the VM's keys again")
            # the bar's own "Pause" from the keyboard: its twin in the menu, 6th item
            shell.key(KEY_M, "m", "super")
            wait_for(lambda: shell.ask("state")["keys_to"] == "install", 10, "the menu open")
            for _ in range(5):
                shell.key(KEY_DOWN, "Down")
            assert shell.ask("state")["keys_to"] == "twin-vm"
            shell.key(KEY_ENTER, "Return")
            wait_for(lambda: (now := shell.ask("state"))["keys_to"] == "display"
                     and now["action_message"].startswith(f"Pause {crm}")
                     and not now["menu"], 10,  # closed once its transition is over
                     "the shown VM's pause asked (no powerd here: refused), the menu closed")
            ok(await call(client, "Remove", "s", [crm]))  # its fill and nbdkit stop too
