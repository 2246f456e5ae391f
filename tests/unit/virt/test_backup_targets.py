"""Which disks a backup job reads, from libvirt's description of the job: each gets its
block job cancelled on its own when the job ends (virt.domains.end_backup_job)."""

from __future__ import annotations

from vmclient.virt.domains import backup_disk_targets

# as libvirt 9.0 describes a running pull-mode job (virDomainBackupGetXMLDesc)
JOB = """<domainbackup mode='pull'>
  <server transport='unix' socket='/s/nbd/sock'/>
  <disks>
    <disk name='vda' backup='yes' type='file' backupmode='full' exportname='vda' index='3'>
      <driver type='qcow2'/><scratch file='/s/vda.qcow2'/>
    </disk>
    <disk name='sda' backup='no'/>
    <disk name='vdb' type='file' backupmode='incremental' incremental='c1' exportname='vdb'>
      <driver type='qcow2'/><scratch file='/s/vdb.qcow2'/>
    </disk>
  </disks>
</domainbackup>"""


def test_the_disks_the_job_reads_in_order() -> None:
    assert backup_disk_targets(JOB) == ["vda", "vdb"]


def test_no_disks_from_an_unreadable_or_empty_description() -> None:
    assert backup_disk_targets("<domainbackup") == []
    assert backup_disk_targets("<domainbackup mode='pull'/>") == []
    assert backup_disk_targets("<domainbackup><disks><disk backup='yes'/></disks>"
                               "</domainbackup>") == []
