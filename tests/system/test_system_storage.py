"""The host's storage is the image's (issue 16): a read-only root, the LUKS2 data
partition unlocked by the TPM2, libvirt's definitions and state and the journal bound
from it, so what is defined survives a reboot and another TPM unlocks nothing.

The test host gets this from meta-vmclient's own files (tests/system/image/layout.py);
the harness gives it a TPM 2.0 (swtpm, state kept across reboots) and the blank disk
where systemd-repart made the partition on its first boot.  The reboot scenario comes
last: it shuts the session's host down and boots it twice.
"""

from __future__ import annotations

import json
import re
import secrets
import time

import harness
import pytest

pytestmark = [pytest.mark.system, pytest.mark.timeout(1200)]

DATA = "/var/lib/vmclient"
PART = "/dev/disk/by-partlabel/vmdata"
# mount point -> its directory on the data partition (meta-vmclient's distro conf)
BINDS = {"/etc/libvirt": "etc-libvirt", "/var/lib/libvirt": "libvirt", "/home": "home"}
SEAT_USER = "weston"  # weston-init's WESTON_USER: the shell's first-start state is in its home
NET = "vmc-persist"
VM = "vmc-persist"
NET_XML = f"<network><name>{NET}</name><bridge name='vmcpersist0'/></network>\n"
# What the console shows when the TPM2 does not unseal the key: crypttab's "headless"
# systemd-cryptsetup fails (as systemd 252 does anyway), and
# vmclient-data-recovery.service (meta-vmclient) asks for the recovery key.
PROMPT = re.compile(r"Enter the recovery key")
# What must not have started while the prompt waits (before the fix, the boot went on
# into libvirtd on the read-only /etc/libvirt and a tmpfs /var/lib/libvirt).
# (The console shortens long unit names with "…": the full ones are looked for, and the
# units' start times are compared with the unlock's once the boot is done.)
STARTED_WITHOUT_DATA = re.compile(
    r"(Starting|Started|Reached target) (libvirtd\.service|local-fs\.target|multi-user\.target)")
NEED_DATA = ("libvirtd.service", "vmclient-powerd.service", "vmclient-provd.service",
             "vmclient-syncd.service", "var-lib-vmclient.mount", "local-fs.target")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def sh(m: harness.Machine, cmd: str, timeout: float = 120) -> str:
    return m.ssh(cmd, timeout=timeout, check=True).stdout


def test_root_is_read_only_and_the_data_partition_is_luks2_unlocked_by_the_tpm2(
        host: harness.Machine) -> None:
    assert sh(host, "findmnt -n -o OPTIONS /").split(",")[0] == "ro"
    r = host.ssh("touch /etc/vmclient-test-probe")
    assert r.rc != 0 and "Read-only file system" in r.stderr, (r.rc, r.stderr)
    assert sh(host, f"findmnt -n -o SOURCE,FSTYPE {DATA}").split() == ["/dev/mapper/vmdata", "ext4"]
    assert sh(host, "systemctl is-active systemd-cryptsetup@vmdata.service").strip() == "active"
    assert re.search(r"^\s*type:\s+LUKS2$", sh(host, "cryptsetup status vmdata"), re.M)
    dump = sh(host, f"cryptsetup luksDump {PART}")
    assert re.search(r"^Version:\s+2$", dump, re.M), dump
    assert re.search(r"^\s+\d+: systemd-tpm2$", dump, re.M), dump
    slots = sh(host, f"systemd-cryptenroll {PART}")
    assert re.search(r"^\s*\d+\s+tpm2$", slots, re.M), slots
    # the machine ID the first boot kept on the partition, bound over the root's empty one
    mid = sh(host, "cat /etc/machine-id").strip()
    assert re.fullmatch(r"[0-9a-f]{32}", mid), mid
    assert sh(host, f"cat {DATA}/machine-id").strip() == mid
    # over the transient one PID 1 made (tmpfs[/machine-id]): the last mount is what is seen
    mounts = sh(host, "findmnt -n -o SOURCE /etc/machine-id").split()
    assert mounts[-1] == "/dev/mapper/vmdata[/machine-id]", mounts


def test_libvirt_and_the_journal_live_on_the_data_partition(host: harness.Machine) -> None:
    for where, what in BINDS.items():
        probe = f"{where}/vmclient-test-probe"
        sh(host, f"echo bound > {probe}")
        try:
            assert sh(host, f"cat {DATA}/{what}/vmclient-test-probe").strip() == "bound", where
        finally:
            sh(host, f"rm -f {probe}")
    # the journal of this boot is written through the bind onto the partition
    sh(host, f"test -s {DATA}/journal/$(cat /etc/machine-id)/system.journal")
    # the seat user's home is there, its own, and takes the shell's state
    assert sh(host, f"stat -c %U /home/{SEAT_USER}").strip() == SEAT_USER
    state = f"/home/{SEAT_USER}/.local/state/vmclient-shell"
    sh(host, f"runuser -u {SEAT_USER} -- mkdir -p {state} && "
             f"runuser -u {SEAT_USER} -- touch {state}/vmclient-test-probe")
    sh(host, f"test -f {DATA}/home/{SEAT_USER}/.local/state/vmclient-shell/vmclient-test-probe")


def test_device_keys_directory_is_on_the_encrypted_partition(host: harness.Machine) -> None:
    """Wherever the keys are written (enrolment makes them), it is the data partition,
    and the root file system has nothing under /var/lib/vmclient."""
    sh(host, f"install -d -m 0700 {DATA}/device")
    assert sh(host, f"findmnt -n -o SOURCE -T {DATA}/device").strip() == "/dev/mapper/vmdata"
    # the root file system itself, without the mounts over it
    view = "/run/vmclient-test-root"
    sh(host, f"mkdir -p {view} && mount --bind -o ro / {view}")
    try:
        assert sh(host, f"ls -A {view}{DATA} 2>/dev/null || true").strip() == ""
        # no machine ID of the image's own: each laptop makes its own at first boot
        assert sh(host, f"stat -c %s {view}/etc/machine-id").strip() == "0"
    finally:
        sh(host, f"umount {view}")


def _console_since_boot(m: harness.Machine) -> str:
    text = m.console_log.read_text(errors="replace")
    return ANSI.sub("", text.rsplit(f"===== harness: boot {m.boots} =====", 1)[-1])


def wait_console(m: harness.Machine, pattern: re.Pattern[str], timeout: float) -> str:
    """The console text of this boot once it matches pattern."""
    deadline = time.monotonic() + timeout
    while not pattern.search(text := _console_since_boot(m)):
        if not m.running:
            pytest.fail(f"QEMU exited before the console showed {pattern.pattern!r}:\n"
                        f"{m.console_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern.pattern!r} on the console within {timeout} s:\n"
                        f"{m.console_tail()}")
        time.sleep(1)
    return text


def boot_id(m: harness.Machine) -> str:
    return sh(m, "cat /proc/sys/kernel/random/boot_id").strip().replace("-", "")


def previous_boot_id(m: harness.Machine) -> str:
    """The boot id of `journalctl -b -1` (what support reads after a reboot)."""
    out = sh(m, "journalctl -b -1 -q -n 1 -o export | sed -n 's/^_BOOT_ID=//p'").strip()
    assert out, sh(m, "journalctl --list-boots; ls /var/log/journal")
    return out


def tpm2_blobs(m: harness.Machine) -> list[str]:
    """The sealed blobs of the LUKS2 header's systemd-tpm2 tokens."""
    meta = json.loads(sh(m, f"cryptsetup luksDump --dump-json-metadata {PART}"))
    return [t["tpm2-blob"] for t in meta["tokens"].values() if t["type"] == "systemd-tpm2"]


# vmclient-powerd's VMs (conftest.NESTED_VMS): policy pause (by default or named) is
# managed-saved at shutdown and restored at boot, the user's paused one as well (paused
# again), policy ignore is not saved: off after the boot.
MANAGED = ("vmc-default", "vmc-pause")
USER_PAUSED = "vmc-user"
IGNORED = "vmc-ignore"


def powerd_restored_the_vms(m: harness.Machine) -> None:
    """After a shutdown and this boot: powerd saved every VM its policy saves (its
    journal of the boot before says no "not saved") and restored them at boot (QEMU
    started with -incoming), the user's paused one paused; the ignored one is off."""
    harness.start_virt_event_watcher(m)
    m.wait_until("systemctl is-active --quiet vmclient-powerd", timeout=120)
    saved_log = sh(m, "journalctl -b -1 -u vmclient-powerd --no-pager -o cat")
    assert saved_log.strip(), "no vmclient-powerd journal from the previous boot"
    failed = [line for line in saved_log.splitlines() if "not saved" in line]
    assert not failed, "managed save at shutdown failed:\n" + "\n".join(failed)
    want = {**{n: "running" for n in MANAGED}, USER_PAUSED: "paused", IGNORED: "shut off"}
    cond = " && ".join(f"[ \"$(virsh domstate {n})\" = {s!r} ]" for n, s in want.items())
    try:
        m.wait_until(cond, timeout=90)
    except harness.HarnessError:
        pytest.fail(f"domains not {want} after the boot: {harness.domstates(m)}")
    for name in (*MANAGED, USER_PAUSED):
        last_start = sh(m, f"tac /var/log/libvirt/qemu/{name}.log | sed -n '0,/starting up/p'")
        assert "-incoming" in last_start, f"{name} was not restored from a managed save"
    assert "no" in sh(m, f"virsh dominfo {IGNORED} | grep -i 'managed save'").lower()
    sh(m, f"virsh -q start {IGNORED}")


def test_vm_and_network_survive_a_reboot_and_another_tpm_asks_for_the_recovery_key(
        host: harness.Machine, nested_vms: dict[str, str | None]) -> None:
    """Two shutdowns and boots of the session's host: another TPM (the recovery key),
    then the TPM the key was sealed to again.  What is defined survives them, and
    vmclient-powerd saves its VMs at each shutdown and restores them at each boot."""
    m = host
    assert set(nested_vms) == {*MANAGED, USER_PAUSED, IGNORED}
    sh(m, f"virsh -q suspend {USER_PAUSED}")
    m.put_text(f"/tmp/net-{NET}.xml", NET_XML)
    # policy ignore: vmclient-powerd does not save it at shutdown, so after the boot it
    # is off and starts from its definition and its disk, both on the data partition
    xml = harness.nested_domain_xml(VM, "ignore").replace(
        "<video>", f"<interface type='network'><source network='{NET}'/>"
                   "<model type='virtio'/></interface>\n    <video>")
    m.put_text(f"/tmp/dom-{VM}.xml", xml)
    sh(m, f"virsh -q net-define /tmp/net-{NET}.xml && virsh -q net-start {NET} && "
          f"qemu-img create -q -f qcow2 /var/lib/libvirt/images/{VM}.qcow2 64M && "
          f"virsh -q define /tmp/dom-{VM}.xml && virsh -q start {VM}", timeout=300)
    sh(m, f"echo {m.boots} > {DATA}/vmclient-test-marker")
    # A recovery key (what vmclientctl recovery-key enrols with systemd-cryptenroll
    # and escrows; here a passphrase keyslot added with the TPM2's token) and its
    # escrowed copy, which a use of the key must retire.
    recovery_key = "vmclient-test-" + secrets.token_hex(16)
    m.put_text("/tmp/recovery-key", recovery_key, mode=0o600)
    sh(m, f"cryptsetup luksAddKey --token-only --pbkdf pbkdf2 --pbkdf-force-iterations 1000 "
          f"{PART} /tmp/recovery-key && rm /tmp/recovery-key", timeout=300)
    sh(m, f"install -d -m 0700 {DATA}/device && echo escrowed > {DATA}/device/recovery-key")
    machine_id = sh(m, "cat /etc/machine-id").strip()
    first_boot = boot_id(m)
    sealed = tpm2_blobs(m)
    m.shutdown(timeout=400)

    # Another TPM (this laptop's after a firmware change, or another laptop's): it
    # cannot unseal the key.  The boot stops at the prompt for the recovery key and
    # nothing that needs the partition starts; typed, the boot goes on, the key is
    # sealed to this TPM and its use is noted.
    m.tpm_state = m.workdir / "tpm-other"
    m.start()
    said = wait_console(m, PROMPT, timeout=400)
    time.sleep(5)  # whatever the boot would start without the partition, it starts now
    said = _console_since_boot(m)
    assert not STARTED_WITHOUT_DATA.search(said), said[-3000:]
    m.console_type(recovery_key + "\n")
    m.wait_ssh()
    m.wait_system_running()
    powerd_restored_the_vms(m)
    assert sh(m, f"findmnt -n -o SOURCE {DATA}").strip() == "/dev/mapper/vmdata"
    assert sh(m, "systemctl is-active libvirtd.service").strip() == "active"
    # each of them started after the partition was opened with the typed key
    unlocked = int(sh(m, "systemctl show -P ActiveEnterTimestampMonotonic "
                         "systemd-cryptsetup@vmdata.service"))
    for unit in NEED_DATA:
        started = int(sh(m, f"systemctl show -P InactiveExitTimestampMonotonic {unit}") or 0)
        assert started >= unlocked, (unit, started, unlocked)
    used = sh(m, f"cat {DATA}/recovery-key-used")
    assert "sealed to this TPM2 again: yes" in used, used
    # the old tpm2 keyslot (sealed to the TPM that is gone) was replaced by one sealed to
    # this TPM, the recovery keyslot kept: the key still opens the partition
    resealed = tpm2_blobs(m)
    assert len(resealed) == 1 and not set(resealed) & set(sealed), (sealed, resealed)
    # the record names the keyslot the key opened: the passphrase keyslot added above
    slot = re.search(r" recovery key used: keyslot (\d+);", used)
    assert slot, used
    assert re.search(rf"^\s*{slot[1]}\s+password$", sh(m, f"systemd-cryptenroll {PART}"), re.M)
    m.put_text("/tmp/recovery-key", recovery_key, mode=0o600)
    sh(m, f"cryptsetup open --test-passphrase --key-file=/tmp/recovery-key {PART}; "
          f"rc=$?; rm /tmp/recovery-key; exit $rc", timeout=300)
    # the used key is retired
    assert sh(m, f"ls -A {DATA}/device/recovery-key 2>/dev/null || true").strip() == ""
    assert sh(m, "cat /etc/machine-id").strip() == machine_id
    assert previous_boot_id(m) == first_boot
    recovery_boot = boot_id(m)
    m.shutdown(timeout=400)

    # That TPM is now the laptop's: the key was sealed to it again, so the next boot
    # unlocks by the TPM alone, no prompt, no use of the recovery key noted.  (Before the
    # fix the re-seal was a no-op: systemd-cryptenroll kept the old keyslot, whose PCR
    # policy was the same, and this boot asked again.)
    m.start()
    said = wait_console(m, re.compile(PROMPT.pattern + r"|vmclient-test login:"), timeout=400)
    assert not PROMPT.search(said), "the TPM2 the key was sealed to again did not unlock it:\n" \
        + said[-3000:]
    m.wait_ssh()
    m.wait_system_running()
    powerd_restored_the_vms(m)
    assert sh(m, f"cat {DATA}/recovery-key-used") == used
    assert sh(m, "systemctl is-active systemd-cryptsetup@vmdata.service").strip() == "active"
    assert sh(m, f"findmnt -n -o SOURCE {DATA}").strip() == "/dev/mapper/vmdata"
    assert sh(m, "cat /etc/machine-id").strip() == machine_id
    assert previous_boot_id(m) == recovery_boot
    assert sh(m, f"cat {DATA}/vmclient-test-marker").strip() == str(m.boots - 2)
    assert NET in sh(m, "virsh net-list --all --name").split()
    assert harness.domstates(m).get(VM) == "shut off"
    sh(m, f"virsh -q net-start {NET} && virsh -q start {VM}", timeout=300)
    m.wait_until(f"[ \"$(virsh domstate {VM})\" = running ]", timeout=120)
    sh(m, f"virsh -q destroy {VM}; virsh -q undefine {VM}; virsh -q net-destroy {NET}; "
          f"virsh -q net-undefine {NET}; rm -f /var/lib/libvirt/images/{VM}.qcow2 "
          f"{DATA}/vmclient-test-marker {DATA}/recovery-key-used")
    sh(m, f"virsh -q resume {USER_PAUSED}")
    journal = sh(m, "journalctl -b all -u vmclient-powerd --no-pager -o cat")
    assert "Traceback" not in journal, journal[-4000:]
    harness.ensure_test_lid(m)
