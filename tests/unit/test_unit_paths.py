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
