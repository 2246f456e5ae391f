"""VM recipes: the TOML that says what a VM is (python-services/docs/vm-recipes.md).

``load(path)`` / ``parse(text, path)`` give a frozen :class:`Recipe` or raise
:class:`RecipeError` naming the file, the dotted key and what is allowed.
Unknown keys are errors, so a typo never falls back to a default.  Nothing here
touches libvirt, the network or files other than the recipe itself.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import ConfigError
from ..host.inventory import BadVMName

FORMAT = 1
KINDS = ("business", "private")
ZONES = ("business", "private", "none")
POWER_POLICIES = ("pause", "s3", "save", "ignore")  # the power manager's VMPolicy values
FIRMWARE = ("uefi", "bios")
DISK_ROLES = ("system", "user")
DISK_BUSES = ("virtio", "sata")
USB_POLICIES = ("none", "listed", "all")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
IMAGE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
USB_ID_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
MAC_RE = re.compile(r"^52:54:00(:[0-9a-f]{2}){3}$")


class RecipeError(ConfigError):
    """{}: {}: {}"""


def vm_name(untrusted: str) -> str:
    """``untrusted`` if it is a VM name (a recipe's ``name``), else :class:`BadVMName`.

    Every name from a caller (D-Bus, the CLI, an order) passes through here before
    it becomes part of a path (``<images_dir>/<vm>``, ``keys/<vm>.wrapped``, ...).
    """
    if not isinstance(untrusted, str) or not NAME_RE.fullmatch(untrusted):
        raise BadVMName(untrusted, NAME_RE.pattern)
    return untrusted


@dataclass(frozen=True)
class Image:
    """Where the system disk comes from: exactly one of catalog / iso / qcow2 / raw."""

    catalog: str = ""
    version: int = 0  # 0 = the newest in the catalog
    iso: PurePosixPath | None = None
    qcow2: PurePosixPath | None = None
    raw: PurePosixPath | None = None

    @property
    def source(self) -> str:
        return "catalog" if self.catalog else "iso" if self.iso else \
            "qcow2" if self.qcow2 else "raw"

    @property
    def media(self) -> PurePosixPath | None:
        """A private VM's local media (the file the user gives; a label once installed)."""
        return self.iso or self.qcow2 or self.raw


@dataclass(frozen=True)
class Disk:
    name: str
    role: str
    size_gib: int  # 0 for a system disk from a catalog image or qcow2: the image's size
    bus: str = "virtio"


@dataclass(frozen=True)
class Sync:
    enabled: bool = False
    memory: bool = False  # include saved memory state, so a restore resumes the VM
    interval_minutes: int = 60
    on_battery: bool = False
    metered: bool = False
    keep_last: int = 3
    keep_daily: int = 7
    keep_weekly: int = 4


@dataclass(frozen=True)
class Devices:
    usb: str = "none"
    usb_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recipe:
    path: str
    name: str
    kind: str
    description: str
    image: Image
    vcpus: int
    memory_mib: int
    firmware: str
    disks: tuple[Disk, ...]
    zone: str
    mac: str
    power: str
    sync: Sync
    devices: Devices

    @property
    def system_disk(self) -> Disk:
        return next(d for d in self.disks if d.role == "system")


class _Table:
    """Typed, tracked access to one TOML table; every error names file and key."""

    def __init__(self, untrusted: Any, path: str, prefix: str) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(untrusted, dict):
            raise RecipeError(path, prefix.rstrip(".") or "(file)", "must be a table")
        self.data: dict[str, Any] = untrusted
        self.seen: set[str] = set()

    def fail(self, key: str, problem: str) -> RecipeError:
        return RecipeError(self.path, (self.prefix + key).rstrip(".") or "(file)", problem)

    def get(self, key: str, kind: type, default: Any = ..., *,
            check: Callable[[Any], str | None] = lambda _v: None) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing (required)")
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            want = {str: "a string", int: "a whole number", bool: "true or false",
                    list: "a list", dict: "a table"}[kind]
            raise self.fail(key, f"must be {want}, not {value!r}")
        problem = check(value)
        if problem:
            raise self.fail(key, problem)
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: Any = ...) -> str:
        return str(self.get(key, str, default, check=lambda v: None if v in choices else
                        f"{v!r} is not one of {', '.join(map(repr, choices))}"))

    def number(self, key: str, lo: int, hi: int, default: Any = ...) -> int:
        return int(self.get(key, int, default, check=lambda v: None if lo <= v <= hi else
                        f"{v} is outside {lo}..{hi}"))

    def text(self, key: str, pattern: re.Pattern[str] | None = None, default: Any = ...) -> str:
        return str(self.get(key, str, default, check=lambda v: None if pattern is None or
                        pattern.fullmatch(v) else f"{v!r} does not match {pattern.pattern}"))

    def table(self, key: str) -> _Table:
        return _Table(self.get(key, dict, {}), self.path, f"{self.prefix}{key}.")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            allowed = ", ".join(sorted(self.seen))
            raise self.fail(unknown[0], f"unknown key (allowed here: {allowed})")


def load(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(path, "(file)", f"cannot read: {exc}") from exc
    return parse(text, str(path))


def parse(text: str, path: str) -> Recipe:
    try:
        untrusted = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or a number of more than 4300 digits
        raise RecipeError(path, "(file)", f"not valid TOML: {exc}") from exc
    except RecursionError:
        raise RecipeError(path, "(file)", "not valid TOML: nested too deeply") from None
    t = _Table(untrusted, path, "")
    fmt = t.get("format", int)
    if fmt != FORMAT:
        raise t.fail("format", f"recipe format {fmt} is not supported (this vmclient reads "
                     f"format {FORMAT})")
    name, kind = t.text("name", NAME_RE), t.choice("kind", KINDS)
    description = t.text("description", default="")
    image = _image(t.table("image"))
    vcpus, memory = t.number("vcpus", 1, 64), t.number("memory_mib", 256, 1 << 20)
    firmware = t.choice("firmware", FIRMWARE, "uefi")
    disks = _disks(t)
    net = t.table("network")
    zone, mac = net.choice("zone", ZONES), net.text("mac", MAC_RE, "")
    net.done()
    power = t.table("power")
    policy = power.choice("policy", POWER_POLICIES)
    power.done()
    sync, devices = _sync(t.table("sync")), _devices(t.table("devices"))
    t.done()
    recipe = Recipe(path, name, kind, description, image, vcpus, memory, firmware, disks, zone,
                    mac, policy, sync, devices)
    _cross_check(recipe, t)
    return recipe


def _image(t: _Table) -> Image:
    def abs_path(v: str) -> str | None:
        return None if v.startswith("/") and ".." not in v.split("/") else \
            "must be an absolute path without '..'"
    catalog = t.text("catalog", IMAGE_NAME_RE, "")
    version = t.number("version", 1, 1 << 31, 0)
    iso = t.get("iso", str, "", check=abs_path)
    qcow2 = t.get("qcow2", str, "", check=abs_path)
    raw = t.get("raw", str, "", check=abs_path)
    given = [k for k, v in (("catalog", catalog), ("iso", iso), ("qcow2", qcow2),
                            ("raw", raw)) if v]
    if len(given) != 1:
        raise t.fail("", "needs exactly one of catalog, iso, qcow2, raw "
                     f"(got {given or 'none'})")
    if version and not catalog:
        raise t.fail("version", "only a catalog image has a version")
    t.done()
    return Image(catalog, version, *(PurePosixPath(p) if p else None for p in (iso, qcow2, raw)))


def _disks(t: _Table) -> tuple[Disk, ...]:
    raw = t.get("disks", list)
    disks = []
    for i, item in enumerate(raw):
        dt = _Table(item, t.path, f"disks[{i}].")
        disks.append(Disk(dt.text("name", NAME_RE), dt.choice("role", DISK_ROLES),
                          dt.number("size_gib", 0, 16384, 0), dt.choice("bus", DISK_BUSES,
                                                                        "virtio")))
        dt.done()
    names = [d.name for d in disks]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise t.fail(f"disks[{i}].name", f"duplicate disk name {name!r}")
    if [d.role for d in disks].count("system") != 1:
        raise t.fail("disks", "needs exactly one disk with role 'system'")
    for i, d in enumerate(disks):
        if d.role == "user" and d.size_gib == 0:
            raise t.fail(f"disks[{i}].size_gib", "a user disk needs a size (1..16384)")
    return tuple(disks)


def _sync(t: _Table) -> Sync:
    s = Sync(t.get("enabled", bool, False), t.get("memory", bool, False),
             t.number("interval_minutes", 5, 7 * 24 * 60, 60), t.get("on_battery", bool, False),
             t.get("metered", bool, False), t.number("keep_last", 1, 1000, 3),
             t.number("keep_daily", 0, 1000, 7), t.number("keep_weekly", 0, 1000, 4))
    t.done()
    return s


def _devices(t: _Table) -> Devices:
    usb = t.choice("usb", USB_POLICIES, "none")
    allow = t.get("usb_allow", list, [])
    for i, v in enumerate(allow):
        if not isinstance(v, str) or not USB_ID_RE.fullmatch(v):
            raise t.fail(f"usb_allow[{i}]", f"{v!r} is not a USB id 'vvvv:pppp' (lower-case hex)")
    if (usb == "listed") != bool(allow):
        raise t.fail("usb_allow", "is required with usb = 'listed' and allowed only with it")
    t.done()
    return Devices(usb, tuple(allow))


def _cross_check(r: Recipe, t: _Table) -> None:
    """Rules that keep business and private VMs apart (docs/vm-recipes.md, "Rules")."""
    if r.kind == "private":
        if r.image.source == "catalog":
            raise t.fail("image.catalog", "a private VM is installed from local media "
                         "(iso, qcow2 or raw), never from the datacenter catalog")
        if r.sync.enabled:
            raise t.fail("sync.enabled", "private VMs are never uploaded: must be false")
        if r.zone == "business":
            raise t.fail("network.zone", "a private VM cannot join the business network")
    else:
        if r.image.source != "catalog":
            raise t.fail("image", "a business VM comes from the datacenter catalog")
        if r.zone == "private":
            raise t.fail("network.zone", "a business VM cannot join the private network")
    system = r.system_disk
    if r.image.source == "iso" and system.size_gib == 0:
        raise t.fail("disks", "installing from an ISO needs a size_gib for the blank system disk")
    if r.sync.memory and not r.sync.enabled:
        raise t.fail("sync.memory", "only meaningful with sync.enabled = true")
