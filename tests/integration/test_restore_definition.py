"""A memory image and the rebuilt definition (issue 13, security point 2), on the real
libvirtd: a VM's memory image restores with the definition :func:`redefine.rebuild` makes
from its recipe, as ``vm restore`` does it (``restore.resume_from``: the defined domain's
XML given to ``restoreFlags``); an image saved from a definition with a planted extra
disk is refused by libvirt's ABI check, so the planted device never runs on the new laptop.

(The whole restore with a memory image, through a sync: test_sync_laptop.py.)"""

from __future__ import annotations

import uuid as uuidlib
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import libvirt
import pytest
from fixtures_virt import URI
from provision_env import Env, need_tools, provision_env

from vmclient.errors import VMClientError
from vmclient.provision import qemuimg, spec
from vmclient.provision.domainxml import DiskBinding, domain_xml
from vmclient.provision.redefine import rebuild
from vmclient.tasks import all_of
from vmclient.virt.libvirt import restore_saved

pytestmark = pytest.mark.asyncio(loop_scope="session")
PP = b"a" * 64


@pytest.fixture(autouse=True)
def _prereqs() -> None:
    need_tools()


async def saved_then_rebuilt(env: Env, tmp: Path, suffix: str, plant: bool) -> tuple[str, str]:
    """Laptop A's domain from the recipe (with a raw host file as an extra disk if
    ``plant``), started, saved, undefined; B's definition rebuilt and defined.
    Returns (the save image, B's defined XML)."""
    prov = env.provisioner()
    text = env.recipe(tmp, suffix).read_text() + "\n[sync]\nenabled = true\n"
    recipe = spec.parse(text, "recipe")
    await prov.ensure_network("business")
    vm_dir = env.cfg.images_dir / recipe.name
    vm_dir.mkdir(parents=True)
    vm_dir.chmod(0o711)
    secret, uuid = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    await all_of(*(qemuimg.create(vm_dir / f"{n}.qcow2", 64 << 20, PP)  # (seconds each)
                   for n in ("system", "data")))
    root = ET.fromstring(domain_xml(
        recipe, uuid=uuid, networks=prov.networks, cpu=env.cfg.cpu_profile(),
        disks={n: DiskBinding(PurePosixPath(vm_dir / f"{n}.qcow2"), secret)
               for n in ("system", "data")}))
    if plant:
        (vm_dir / "host-file").write_bytes(b"host secret".ljust(1 << 20, b"\0"))
        devices = root.find("devices")
        assert devices is not None
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu", type="raw")
        ET.SubElement(disk, "source", file=str(vm_dir / "host-file"))
        ET.SubElement(disk, "target", dev="vdz", bus="virtio")
    await env.hv.define(ET.tostring(root, encoding="unicode"), recipe.name)
    save = vm_dir / "memory.save"
    conn = libvirt.open(URI)
    try:
        async with env.hv.ephemeral_secrets([secret], PP, recipe.name):
            dom = conn.lookupByName(recipe.name)
            dom.create()
        live = dom.XMLDesc(0)
        dom.save(str(save))
        dom.undefine()
    finally:
        dom = None
        conn.close()
    d = rebuild(recipe.name, {"uuid": uuid, "recipe": text, "domain": live}, "snapshot 1",
                PurePosixPath(vm_dir), ["vda", "vdb"], secret_uuid=secret,
                cpu=env.cfg.cpu_profile(), networks=prov.networks)
    return str(save), await env.hv.xml_desc(await env.hv.define(d.xml, recipe.name))


async def test_a_memory_image_restores_with_the_rebuilt_definition_a_planted_one_not(
        tmp_path: Path) -> None:
    async with provision_env(tmp_path) as env:
        save, xml = await saved_then_rebuilt(env, tmp_path, "mem", plant=False)
        async with env.hv.ephemeral_secrets([ET.fromstring(xml).find(
                "devices/disk/source/encryption/secret").get("uuid", "")], PP, "mem"):  # type: ignore[union-attr]
            await restore_saved(env.hv, save, xml, env.name("mem"))
        assert (await env.hv.lookup_name(env.name("mem"))).state.active

        save, xml = await saved_then_rebuilt(env, tmp_path, "planted", plant=True)
        assert "host-file" not in xml
        with pytest.raises(VMClientError, match="disk count 2 does not match source 3"):
            await restore_saved(env.hv, save, xml, env.name("planted"))
        assert not (await env.hv.lookup_name(env.name("planted"))).state.active
