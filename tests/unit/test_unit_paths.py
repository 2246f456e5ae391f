"""The units' sandbox paths exist when systemd sets up the namespace.

A path in ``ReadWritePaths=``/``ReadOnlyPaths=``/``InaccessiblePaths=`` without the
``-`` prefix that does not exist makes systemd refuse to start the unit
(``226/NAMESPACE``).  Each one must be made before any vmclient daemon starts: by
tmpfiles.d (sysinit), by the unit's own ``StateDirectory=``/``RuntimeDirectory=``, or
by a package the image carries (libvirt's image directory).  A fresh laptop has
nothing else: vmclient-syncd once needed ``/var/lib/vmclient/provision/keys``, which
only provd's first install made.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from testlib import DATA

FROM_PACKAGES = {PurePosixPath("/var/lib/libvirt/images")}  # libvirt-daemon / libvirt-libvirtd
SANDBOX_KEYS = ("ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths")
UNITS = sorted((DATA / "systemd").glob("*.service"))


def settings(text: str) -> list[tuple[str, str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def tmpfiles_dirs() -> set[PurePosixPath]:
    made = set()
    for conf in (DATA / "tmpfiles.d").glob("*.conf"):
        for line in conf.read_text().splitlines():
            f = line.split()
            if f and f[0] in ("d", "D", "v", "q", "Q"):
                made.add(PurePosixPath(f[1]))
    return made


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_every_required_sandbox_path_exists_before_the_unit_starts(unit: Path) -> None:
    own = set()
    required = []
    for key, value in settings(unit.read_text()):
        if key == "StateDirectory":
            own |= {PurePosixPath("/var/lib") / d.split(":")[0] for d in value.split()}
        elif key == "RuntimeDirectory":
            own |= {PurePosixPath("/run") / d.split(":")[0] for d in value.split()}
        elif key in SANDBOX_KEYS:
            required += [PurePosixPath(p.lstrip("+")) for p in value.split()
                         if not p.startswith(("-", "+-"))]
    made = tmpfiles_dirs() | own | FROM_PACKAGES
    missing = [str(p) for p in required if p not in made]
    assert not missing, (f"{unit.name}: {missing} must exist at start (226/NAMESPACE "
                         "otherwise): tmpfiles.d, StateDirectory= or a '-' prefix")


def test_syncd_may_write_every_directory_its_agent_removes_from() -> None:
    """A wipe or an unassign removes the VM's key, disks, recipe directory and saved
    memory: each must be writable inside vmclient-syncd.service's sandbox
    (ProtectSystem=strict), or the order fails half done ("could not remove …")."""
    from vmclient.sync import config as sconfig
    from vmclient.sync.hosting import manage_config
    unit = settings((DATA / "systemd" / "vmclient-syncd.service").read_text())
    writable = [PurePosixPath(p.lstrip("-")) for k, v in unit if k == "ReadWritePaths"
                for p in v.split()]
    writable += [PurePosixPath("/var/lib") / d for k, v in unit if k == "StateDirectory"
                 for d in v.split()]
    m = manage_config(sconfig.SyncConfig())
    written = [m.state_dir, m.vm_keys_dir, m.images_dir, m.device_keys_dir, m.save_dir,
               *m.vm_state_dirs, *m.business_caches]
    denied = [str(d) for d in written
              if not any(PurePosixPath(d).is_relative_to(w) for w in writable)]
    assert not denied, f"vmclient-syncd.service: not writable in its sandbox: {denied}"


def test_powerd_has_its_two_directories_and_keeps_the_runtime_one_across_restarts() -> None:
    """powerd records its saves in its state directory and its pauses in its runtime
    directory (power.toml's defaults): both writable in its sandbox, and the runtime one
    not removed when the daemon stops (systemd's default), or a daemon restarted while
    the VMs are paused forgets them and leaves them paused."""
    from vmclient.power.config import PowerConfig
    unit = dict(settings((DATA / "systemd" / "vmclient-powerd.service").read_text()))
    cfg = PowerConfig()
    assert cfg.state_dir == PurePosixPath("/var/lib") / unit["StateDirectory"]
    assert cfg.runtime_dir == PurePosixPath("/run") / unit.get("RuntimeDirectory", "?")
    assert unit.get("RuntimeDirectoryPreserve") == "yes"
