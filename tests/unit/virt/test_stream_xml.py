"""The definition of a streamed VM (issue 19): each disk backed by its NBD export, an I/O
error pausing the VM; and the user QEMU runs as, from libvirt's capabilities."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vmclient.virt.stream import dac_owner, nbd_backed, with_nbd_backing

XML = """<domain type='kvm'><name>office</name><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/v/office/system.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/v/office/data.qcow2'/><target dev='vdb' bus='virtio'/></disk>
<disk type='file' device='cdrom'><target dev='sda' bus='sata'/></disk>
</devices></domain>"""


def test_only_the_named_disks_get_their_export_and_the_stop_policies() -> None:
    xml = with_nbd_backing(XML, {"vda": "/v/office/stream/vda.sock"})
    root = ET.fromstring(xml)
    vda, vdb, _cd = root.iterfind("devices/disk")
    assert [e.tag for e in vda] == ["driver", "source", "backingStore", "target"]
    host = vda.find("backingStore/source[@protocol='nbd']/host")
    assert host is not None and host.attrib == {"transport": "unix",
                                                "socket": "/v/office/stream/vda.sock"}
    assert vda.find("backingStore/format").get("type") == "raw"  # type: ignore[union-attr]
    assert vda.find("backingStore/backingStore") is not None  # the chain ends there
    driver = vda.find("driver")
    assert driver is not None
    assert (driver.get("error_policy"), driver.get("rerror_policy")) == ("stop", "stop")
    assert vdb.find("backingStore") is None and vdb.find("driver").get("error_policy") is None  # type: ignore[union-attr]
    assert nbd_backed(xml) == ["vda"]
    assert nbd_backed(XML) == []


CAPS = """<capabilities><host><secmodel><model>none</model><doi>0</doi></secmodel>
<secmodel><model>dac</model><doi>0</doi>
<baselabel type='kvm'>+64055:+64055</baselabel><baselabel type='qemu'>+0:+0</baselabel>
</secmodel></host></capabilities>"""


def test_the_user_qemu_runs_as_per_domain_type() -> None:
    assert dac_owner(CAPS, "kvm") == (64055, 64055)
    assert dac_owner(CAPS, "qemu") == (0, 0)
    assert dac_owner(CAPS, "xen") is None
    assert dac_owner("<capabilities><host/></capabilities>", "kvm") is None
