"""System tests: a whole vmclient host booted under QEMU, driven over SSH and QMP.

Skipped unless asked for: `pytest --system` (tests/conftest.py) or
VMCLIENT_SYSTEM_TESTS=1.  They also need root, QEMU and mmdebstrap (see
tests/system/apt-packages.txt): missing ones skip them, or fail them in CI
(testlib.need).

The host boots once per session.  VMCLIENT_SYSTEM_IMAGE points the tests at an
image instead of building one: a directory made by tests/system/image/build or
a Yocto image's *.qemuboot.conf (then VMCLIENT_SYSTEM_SSH_KEY names the key
root accepts; without it, an empty root password is tried).
VMCLIENT_KEEP_WORKDIR=1 keeps the QEMU work directory (console log, QMP
events) for a look after a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness

from testlib import need, system_tests_enabled  # tests/conftest.py puts tests/ on sys.path


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "system tests run as root (image build, QEMU)"
    for tool in ("qemu-system-x86_64", "qemu-img"):
        if not shutil.which(tool):
            return f"{tool} not installed (tests/system/apt-packages.txt)"
    if not os.environ.get("VMCLIENT_SYSTEM_IMAGE"):
        for tool in ("mmdebstrap", "swtpm"):  # the image's build; its TPM 2.0
            if not shutil.which(tool):
                return f"{tool} not installed (tests/system/apt-packages.txt)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if system_tests_enabled(config):
        # The tests on the session's host come last: the ones booting machines of their
        # own (the journey's laptops, the A/B machine, the verity one) would otherwise run
        # beside it, idle under TCG with its nested VMs (~0.3 of a core), until the end.
        items.sort(key=lambda item: bool(item.get_closest_marker("system"))
                   and "host" in getattr(item, "fixturenames", ()))
        return
    reason = "system tests boot a whole host under QEMU: run with --system or VMCLIENT_SYSTEM_TESTS=1"
    for item in items:
        if item.get_closest_marker("system"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def host_boot_config() -> harness.BootConfig:
    """The image to boot: built (or reused from the cache) unless given."""
    missing = _missing()
    need(missing is None, missing or "")
    given = os.environ.get("VMCLIENT_SYSTEM_IMAGE")
    if given:
        path = Path(given)
        if path.name.endswith(".qemuboot.conf"):
            key = os.environ.get("VMCLIENT_SYSTEM_SSH_KEY")
            return harness.BootConfig.from_qemuboot(path, Path(key) if key else None)
        return harness.BootConfig.from_image_dir(path)
    venv = Path(sys.prefix)
    out = subprocess.run(
        [str(HERE / "image" / "build"), "--venv", str(venv)],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout.strip().splitlines()[-1]
    return harness.BootConfig.from_image_dir(Path(out))


@pytest.fixture(scope="session")
def host(host_boot_config: harness.BootConfig) -> Iterator[harness.Machine]:
    """The booted host: SSH up and systemd done starting units."""
    m = harness.Machine(host_boot_config)
    try:
        m.start()
        m.boot_to_ssh_s = m.wait_ssh()
        m.wait_system_running()
        harness.ensure_test_lid(m)
        print(f"\nsystem: host up, SSH after {m.boot_to_ssh_s:.0f} s (workdir {m.workdir})")
        yield m
    finally:
        artifacts = os.environ.get("VMCLIENT_SYSTEM_ARTIFACTS")
        if artifacts:
            dest = Path(artifacts)
            dest.mkdir(parents=True, exist_ok=True)
            if m.running:
                r = m.ssh("journalctl -b all --no-pager -o short-monotonic", timeout=120)
                (dest / "journal.txt").write_text(r.stdout)
            for name in ("console.log", "qmp-events.jsonl", "qemu.log"):
                if (m.workdir / name).exists():
                    shutil.copy(m.workdir / name, dest / name)
        m.close()


@pytest.fixture(scope="session")
def powerd(host: harness.Machine) -> harness.Machine:
    """The host, when its image carries vmclient-powerd (skip otherwise)."""
    probe = host.ssh("/opt/vmclient/bin/python -c 'import vmclient.power.daemon' 2>&1")
    need(probe.rc == 0, "the host image has no vmclient-powerd "
                        f"({probe.stdout.strip()[-200:]})")
    host.wait_until("systemctl is-active --quiet vmclient-powerd", timeout=120)
    return host


# name -> power policy in the domain metadata (None: no metadata, default pause)
NESTED_VMS = {
    "vmc-default": None,
    "vmc-pause": "pause",
    "vmc-user": None,  # the tests pause it themselves, as a user would
    "vmc-ignore": "ignore",
}


@pytest.fixture(scope="session")
def nested_vms(host: harness.Machine) -> dict[str, str | None]:
    """Firmware-only KVM domains inside the host, all running; lifecycle
    events mirrored into the kernel log (harness.start_virt_event_watcher)."""
    host.ssh("test -c /dev/kvm", check=True)
    harness.start_virt_event_watcher(host)
    for name, policy in NESTED_VMS.items():
        harness.define_nested_vm(host, name, policy, start=False)
    # Start them in parallel: each takes seconds under nested KVM.
    host.ssh(" & ".join(f"virsh -q start {n} >/dev/null" for n in NESTED_VMS) + "; wait",
             timeout=300, check=True)
    host.wait_until(
        " && ".join(f"[ \"$(virsh domstate {n})\" = running ]" for n in NESTED_VMS), timeout=120
    )
    return dict(NESTED_VMS)
