"""Host update A/B with automatic fallback on a booted test host (issue 18).

The A/B machine (``tests/system/image/ab.py``) boots through OVMF and systemd-boot from
a GPT disk: ESP, root slots ``vmroot_a`` (release 1.0) and ``vmroot_b`` (empty), the
data partition on its second disk as every test host has it.  The layer's own pieces run
for real: RAUC's system configuration, the custom systemd-boot backend, the bundle hook,
``vmclient-boot-check.service`` gating boot-complete.target, and Debian's RAUC and
systemd-bless-boot.  Two signed verity bundles built from the test image wait on a
read-only disk: 2.0 (another ``VERSION_ID``) and 2.1 (vmclient-provd cannot start).

1. slot A runs 1.0 with two VMs (one running, one paused by its user); the services'
   RAUC adapter (``hostupdate.Rauc``) installs 2.0: RAUC writes slot B (the ESP is
   unmounted meanwhile, as efi.automount's idle expiry does it: RAUC goes on), the hook
   puts B's UKI on the ESP, the backend makes B primary on trial;
2. restart: B runs 2.0, the gate passes, systemd-bless-boot marks B good, the VMs are
   where they were (saved at shutdown, restored at boot);
3. 2.1 goes into slot A; restart: A boots, provd does not come up, the gate fails and
   the host restarts by itself; A's one try is spent, B boots again, RAUC says A is bad,
   the VMs are where they were, and hostupdate's record says "2.1 did not boot; fell
   back", which the heartbeat's ``host`` table carries to IT.

The datacenter part (``vmclient-admin host publish``, the order, the download) is not
repeated here: under TCG the download of a 1 GiB bundle into the guest costs minutes;
``tests/integration/test_host_update.py`` runs it against the same RAUC.  Unlike this
machine's kernel, the test host's (Debian's) has dm-verity: the bundles are verity ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import harness
import pytest

from testlib import need

pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

HERE = Path(__file__).resolve().parent
VMS = {"vmc-ab-run": "running", "vmc-ab-user": "paused"}
STATE = "/var/lib/vmclient/test-host-update"
# The laptop's side of a host update, as HostUpdater.cycle does it, without the
# datacenter: RAUC through hostupdate.Rauc, the record, after_restart and the heartbeat's
# host table.  argv: steps, each "install:RELEASE:BUNDLE" or "after-restart", run in one
# Python (its start and imports cost ~30 s under TCG); one JSON line per step.
GUEST = """
import asyncio, json, sys
from dataclasses import replace
from pathlib import Path
from vmclient.manage import hostupdate as hu
from vmclient.manage import status

state = Path(%r)
state.mkdir(mode=0o700, exist_ok=True)
running = status.os_release(Path("/etc/os-release"))["VERSION_ID"]
rauc = hu.Rauc()

async def step(what):
    st = await rauc.status()
    up = hu.HostUpdater(hu.HostConfig(state, state), None, None, None, "laptop-ab", rauc,
                        running)
    rec = replace(hu.load_record(state), slot=st.booted, running=running)
    if what.startswith("install:"):
        _, release, bundle = what.split(":", 2)
        said = await rauc.install(release, Path(bundle))
        rec = replace(rec, installed=release, boot=up.boot(), result=said)
    else:
        rec = up.after_restart(rec)
    hu.save_record(state, rec)
    st = await rauc.status()
    primary = st.slots.get(st.primary, {}).get("bootname")
    print(json.dumps({"step": what, "booted": st.booted, "primary": primary,
                      "running": running,
                      "slots": {i.get("bootname"): i.get("boot_status")
                                for i in st.slots.values()},
                      "host": hu.status_table(state), "failed": list(rec.failed)}),
          flush=True)

async def main():
    for what in sys.argv[1:]:
        await step(what)

asyncio.run(main())
""" % STATE


@pytest.fixture(scope="module")
def ab_config() -> harness.BootConfig:
    if os.environ.get("VMCLIENT_SYSTEM_IMAGE"):
        pytest.skip("VMCLIENT_SYSTEM_IMAGE names another image: the A/B machine is built here")
    need(os.geteuid() == 0, "the A/B image is built as root")
    from image import ab
    for f in (ab.OVMF_CODE, ab.OVMF_VARS, ab.STUB, ab.SYSTEMD_BOOT):
        need(f.exists(), f"{f} is missing (tests/system/apt-packages.txt: ovmf, systemd-boot-efi)")
    for tool in ("mmdebstrap", "swtpm", "rauc", "mcopy", "mkfs.vfat", "sfdisk", "debugfs"):
        need(bool(subprocess.run(["which", tool], capture_output=True).stdout),
             f"{tool} is not installed (tests/system/apt-packages.txt)")
    out = subprocess.run([str(HERE / "image" / "build"), "--ab", "--venv", sys.prefix],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    return harness.BootConfig.from_image_dir(Path(out.splitlines()[-1]))


def guest(m: harness.Machine, *steps: str) -> list[dict]:
    """Runs GUEST's steps in one Python on the host; their JSON results, in order."""
    r = m.ssh("/opt/vmclient/bin/python - " + " ".join(steps), stdin=GUEST, timeout=600)
    said = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith('{"step"')]
    if r.rc != 0 or len(said) != len(steps):
        log = m.ssh("journalctl -b 0 -o short-monotonic --no-pager -u rauc.service | tail -40; "
                    "dmesg | tail -20").stdout
        pytest.fail(f"{steps}: {r.stdout}\n{r.stderr}\n--- rauc.service, kernel\n{log}")
    return said


def booted(m: harness.Machine) -> tuple[str, str]:
    """(slot from the command line, VERSION_ID)."""
    cmdline = m.ssh("cat /proc/cmdline", check=True).stdout.split()
    slot = next(p.split("=", 1)[1] for p in cmdline if p.startswith("rauc.slot="))
    ver = m.ssh(". /etc/os-release && echo $VERSION_ID", check=True).stdout.strip()
    return slot, ver


def entries(m: harness.Machine) -> list[str]:
    return sorted(m.ssh("ls /efi/loader/entries", check=True).stdout.split())


def prepare_install(m: harness.Machine) -> None:
    """The bundles' disk mounted; rauc.service without the image's CPUQuota=9% for this
    boot (under a tenth of a TCG-emulated core makes a 1.2 GiB install take many minutes; the
    quota is the layer's, checked in tests/layer)."""
    m.ssh("mkdir -p /run/bundles && mount -o ro,noload /dev/disk/by-id/virtio-bundles "
          "/run/bundles && systemctl set-property --runtime rauc.service CPUQuota=",
          check=True)
    # systemd-gpt-auto-generator adds an efi.automount that unmounts an idle ESP after
    # 2 min, with a stop job on efi.mount; while the layer's rauc.service drop-in required
    # /efi, that stopped RAUC in the middle of an install ("D-Bus error while
    # installing").  It only wants the ESP now: the ESP is unmounted here as the expiry
    # does it, once RAUC writes the slot, and the install goes on; the hook and the
    # backend open /efi again through the automount (checked by expired_esp()).
    m.ssh("systemd-run --quiet --unit=vmclient-test-expire-esp /bin/sh -c "
          "'journalctl -b -f -n all -o cat -u rauc.service | (grep -q -m1 "
          "\"writing data to device\" && systemctl stop efi.mount && "
          "echo unmounted > /run/vmclient-test-esp)'", check=True)
    assert m.ssh("systemctl show -P CPUQuotaPerSecUSec rauc").stdout.strip() == "infinity"


def expired_esp(m: harness.Machine) -> None:
    """The ESP was unmounted while RAUC wrote the slot (prepare_install)."""
    said = m.ssh("cat /run/vmclient-test-esp; journalctl -b -o cat --no-pager "
                 "-u vmclient-test-expire-esp | tail -5").stdout
    assert said.startswith("unmounted"), f"the ESP was not unmounted during the install: {said}"


def wait_vms(m: harness.Machine, timeout: float = 180) -> None:
    cond = " && ".join(f"[ \"$(virsh domstate {n})\" = {s!r} ]" for n, s in VMS.items())
    try:
        m.wait_until(cond, timeout=timeout, interval=2)
    except harness.HarnessError:
        pytest.fail(f"the VMs are not where they were ({VMS}): {harness.domstates(m)}")


def test_update_to_the_inactive_slot_then_a_bad_update_falls_back_by_itself(
        ab_config: harness.BootConfig, record_property: Callable[[str, object], None]) -> None:
    steps: list[tuple[str, float]] = []
    t0 = last = time.monotonic()

    def lap(what: str) -> None:
        nonlocal last
        now = time.monotonic()
        steps.append((what, now - last))
        last = now
    # every restart a fresh QEMU (harness.Machine.cold_restarts; README, "The A/B machine")
    m = harness.Machine(ab_config, name="vmclient-ab", cold_restarts=True)
    try:
        m.start()
        m.wait_ssh(timeout=900)  # the first boot makes the data partition
        lap("first boot (slot A) to SSH")
        assert booted(m) == ("a", "1.0")
        assert entries(m) == ["vmclient-a.conf"]
        try:
            m.wait_until("systemctl is-active --quiet vmclient-powerd", timeout=300)
        except harness.HarnessError:
            pytest.fail("vmclient-powerd is not active:\n" + m.ssh(
                "systemctl status vmclient-powerd --no-pager | head -20; journalctl -b "
                "--no-pager -o short-monotonic -u vmclient-powerd | tail -30").stdout)
        lap("powerd active")
        m.ssh("test -c /dev/kvm", check=True)
        for name in VMS:
            harness.define_nested_vm(m, name)
        m.ssh("virsh -q suspend vmc-ab-user", check=True)
        wait_vms(m)
        prepare_install(m)
        lap("VMs up, install prepared")

        # 2.0 into slot B, which becomes primary on trial (one try)
        st, = guest(m, "install:2.0:/run/bundles/vmclient-2.0.raucb")
        lap("install 2.0 into slot B")
        expired_esp(m)
        assert (st["booted"], st["primary"]) == ("a", "b"), st
        assert entries(m) == ["vmclient-a.conf", "vmclient-b+1.conf"]
        assert m.ssh("cmp /efi/EFI/vmclient/vmclient-a.efi /efi/EFI/vmclient/vmclient-b.efi"
                     ).rc == 1, "the hook did not put slot B's own UKI on the ESP"

        m.reboot()
        lap("restart into slot B to SSH")
        assert booted(m) == ("b", "2.0")
        # the gate passed and systemd-bless-boot took B's counter away: B is good
        m.wait_until("systemctl is-active --quiet systemd-bless-boot", timeout=300, interval=2)
        lap("B blessed")
        assert m.ssh("systemctl is-active vmclient-boot-check").stdout.strip() == "active"
        assert entries(m) == ["vmclient-a.conf", "vmclient-b.conf"]
        wait_vms(m)
        lap("VMs back")
        # the record after the restart, then 2.1 (vmclient-provd does not start) into slot
        # A, now the inactive one: one Python on the host for both
        prepare_install(m)
        st, st21 = guest(m, "after-restart", "install:2.1:/run/bundles/vmclient-2.1.raucb")
        lap("after-restart record, install 2.1 into A")
        assert st["booted"] == "b" and st["slots"] == {"a": "good", "b": "good"}, st
        assert st["host"]["release"] == "2.0" and "running 2.0" in st["host"]["result"], st
        st = st21
        expired_esp(m)
        assert (st["booted"], st["primary"]) == ("b", "a"), st
        assert entries(m) == ["vmclient-a+1.conf", "vmclient-b.conf"]

        # restart: 2.1 fails its gate, the host restarts by itself into B
        m.reboot(resets=2)
        lap("restart, 2.1 fails, back in B to SSH")
        assert booted(m) == ("b", "2.0")
        assert entries(m) == ["vmclient-a+0-1.conf", "vmclient-b.conf"]
        bad = m.ssh("journalctl -b -1 -o cat --no-pager -u vmclient-boot-check.service "
                    "-u vmclient-provd.service", check=True).stdout
        assert "vmclient-boot-check.service: Failed" in bad or "Failed to start" in bad, bad
        wait_vms(m)
        lap("VMs back")
        st, = guest(m, "after-restart")
        lap("after-restart record")
        assert st["booted"] == "b" and st["primary"] == "b", st
        assert st["slots"]["a"] == "bad" and st["slots"]["b"] == "good", st
        assert "2.1" in st["failed"], st
        assert "failed: 2.1 did not boot; fell back to 2.0 in slot b" in st["host"]["result"], st
        assert "Traceback" not in m.ssh("journalctl -b 0 -u vmclient-powerd --no-pager").stdout
    finally:
        total = time.monotonic() - t0
        laps = [f"  {what:40s} {s:6.0f} s" for what, s in steps]
        record_property("summary", "\n".join(["A/B update on the test host:", *laps,
                                               f"  {'total':40s} {total:6.0f} s"]))
        if m.running:
            print(m.ssh("journalctl --no-pager -o short-monotonic _PID=1 "
                        "--grep 'Startup finished|Reached target|Stopping|Stopped target|"
                        "Shutting down|reboot' | grep -E 'Startup finished|boot-complete|"
                        "Shutting down|Reached target (Multi|Graphical|Reboot|System Shutdown)|"
                        "-- Boot'; journalctl --no-pager -o short-monotonic -u rauc "
                        "| grep -iE 'install|progress|succeed|fail' | tail -30; "
                        "journalctl --no-pager -o short-monotonic "
                        "--grep 'vmclient-boot-check|bless|watchdog|Rebooting' | tail -40",
                        timeout=120).stdout)
        m.close()
