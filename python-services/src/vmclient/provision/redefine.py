"""A restored VM's domain definition, rebuilt from its recipe (pure; used by :mod:`.restore`).

A snapshot carries the old laptop's domain XML (``meta.domain``) and the recipe
the VM was installed from (``meta.recipe``).  Both were written by that laptop;
a stolen, rooted laptop that syncs before it is revoked writes whatever it
wants, signed with its own, still valid device key.  Defining its XML as it is
would carry ``<hostdev>``, extra disks reading host files, ``<qemu:commandline>``
or ``kind="private"`` (which skips the lease) onto the new laptop.

So the definition is rebuilt with :func:`domain_xml` from the recipe, which the
parser validates like any recipe, and which must be a *business* recipe named
after the VM (only business VMs are synchronised).  From the old XML only these
are kept, each checked: the MAC address (libvirt's, in QEMU's ``52:54:00``
range, when the recipe names none: a guest's network identity and a memory
image's ABI need it) and the installed catalog version (a number); the UUID is
the snapshot's own, and the disks are the recipe's, laid out in this laptop's
VM directory under a fresh secret UUID, matched to the snapshot's disks by the
target each gets.  What a rooted laptop can still choose is what any recipe
may say (threat-model.md §8).
"""

from __future__ import annotations

import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import VMClientError
from ..virt.cpu import CPUProfile
from . import spec
from .domainxml import _UUID_RE, NETWORKS, VM_NS, DiskBinding, domain_xml


class RestoreError(VMClientError):
    """Cannot restore VM {!r}: {}"""


@dataclass(frozen=True)
class Definition:
    recipe: spec.Recipe
    recipe_text: str  # as the snapshot carries it (validated): kept for upgrades
    xml: str  # the domain XML to define
    files: dict[str, str]  # snapshot disk name (its target, e.g. vda) -> file in the VM dir


def rebuild(vm: str, meta: Mapping[str, str], where: str, vm_dir: PurePosixPath,
            disks: Collection[str], *, secret_uuid: str, cpu: CPUProfile,
            networks: Mapping[str, str] = NETWORKS, anti_spoofing: bool = True) -> Definition:
    """The definition of ``vm`` from the snapshot's ``meta``; ``disks`` are the snapshot's
    disk names (without its memory image).  :class:`RestoreError` says what is wrong."""
    def fail(problem: str) -> RestoreError:
        return RestoreError(vm, f"{where}: {problem}")

    untrusted_text = meta.get("recipe", "")
    if not untrusted_text:
        raise fail("carries no recipe, so its domain definition cannot be rebuilt")
    try:
        recipe = spec.parse(untrusted_text, "its recipe")
    except spec.RecipeError as exc:
        raise fail(f"its recipe is not valid: {exc}") from None
    if recipe.name != vm:
        raise fail(f"its recipe is for VM {recipe.name!r}")
    if recipe.kind != "business":
        raise fail(f"its recipe says kind {recipe.kind!r}: only business VMs are "
                   "synchronised and restored")
    uuid = meta.get("uuid", "")
    if not _UUID_RE.fullmatch(uuid):
        raise fail(f"its VM UUID {uuid!r} is not a UUID")
    old = _old_domain(meta.get("domain", ""), fail)
    if old.findtext("name") != vm or old.findtext("uuid") != uuid:
        raise fail("its domain definition names another VM")
    version = _image_version(old)
    files = {d.name: f"{d.name}-v{version}.qcow2" if d.role == "system" and version
             else f"{d.name}.qcow2" for d in recipe.disks}
    recipe = dataclasses.replace(recipe, mac=recipe.mac or _mac(old))
    xml = domain_xml(recipe, uuid=uuid, image_version=version, networks=networks,
                     anti_spoofing=anti_spoofing, cpu=cpu,
                     disks={n: DiskBinding(vm_dir / f, secret_uuid) for n, f in files.items()})
    targets = {t.get("dev", ""): d.findtext("serial", "").removeprefix("vmclient-")
               for d in ET.fromstring(xml).iterfind("devices/disk[@device='disk']")
               if (t := d.find("target")) is not None}
    if set(targets) != set(disks):
        raise fail(f"its disks ({', '.join(sorted(disks))}) are not its recipe's "
                   f"({', '.join(sorted(targets))})")
    return Definition(recipe, untrusted_text, xml,
                      {dev: files[name] for dev, name in targets.items()})


def _old_domain(untrusted: str, fail: Callable[[str], RestoreError]) -> ET.Element:
    if not untrusted:
        raise fail("carries no domain definition (written before memory and restore "
                    "support)")
    try:
        return ET.fromstring(untrusted)
    except ET.ParseError as exc:
        raise fail(f"its domain definition does not parse: {exc}") from None


def _mac(old: ET.Element) -> str:
    """The old NIC's MAC if it is one of QEMU's (else libvirt picks a new one)."""
    mac = old.find("devices/interface/mac")
    address = (mac.get("address", "") if mac is not None else "").lower()
    return address if spec.MAC_RE.fullmatch(address) else ""


def _image_version(old: ET.Element) -> int:
    vm = old.find(f"metadata/{{{VM_NS}}}vm")
    text = vm.get("image-version", "") if vm is not None else ""
    return int(text) if re.fullmatch(r"[0-9]{1,9}", text) else 0


__all__ = ["Definition", "RestoreError", "rebuild"]
