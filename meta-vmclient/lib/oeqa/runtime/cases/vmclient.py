# SPDX-License-Identifier: MIT
#
# Runtime tests of the vmclient host image for `bitbake -c testimage
# vmclient-image` (TEST_SUITES += "vmclient"): the services run, libvirtd
# answers, KVM is usable, the power manager's D-Bus API pauses and resumes a
# firmware-only VM, QEMU has SPICE and USB redirection and its firmware
# descriptors, and a persistent domain, a persistent network and the
# journal survive a reboot of the host (the read-only root keeps nothing:
# they live on the data partition).

import time

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage

BUS_NAME = "org.vmclient.VMClient1"
POWER_PATH = "/org/vmclient/VMClient1/Power"
POWER_IFACE = "org.vmclient.VMClient1.Power"
VIRSH = "virsh -c qemu:///system"
TEST_DOMAIN = "vmclient-oeqa-fw"
PERSIST_DOMAIN = "vmclient-oeqa-persist"
PERSIST_NETWORK = "vmclient-oeqa-net"
DATA_DIR = "/var/lib/vmclient"


class VMClientHostTest(OERuntimeTestCase):

    def run_ok(self, command, timeout=None):
        status, output = self.target.run(command, timeout=timeout)
        self.assertEqual(status, 0, msg="%s\n%s" % (command, output))
        return output

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_root_filesystem_is_read_only(self):
        status, output = self.target.run('touch /vmclient-oeqa-probe')
        self.assertNotEqual(status, 0, msg="the root filesystem is writable: %s" % output)

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_state_lives_on_the_data_partition(self):
        source = self.run_ok('findmnt -n -o SOURCE /var/lib/vmclient').strip()
        root = self.run_ok('findmnt -n -o SOURCE /').strip()
        self.assertNotEqual(source, root, msg="/var/lib/vmclient is not a separate partition")
        self.run_ok('test -w /var/lib/vmclient')

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_no_package_manager_on_the_target(self):
        for tool in ('opkg', 'dnf', 'rpm', 'apt-get'):
            status, _ = self.target.run('command -v %s' % tool)
            self.assertNotEqual(status, 0, msg="%s is installed" % tool)

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_admin_key_is_installed(self):
        self.run_ok('grep -q "BEGIN PUBLIC KEY" /etc/vmclient/admin-key.pub')

    @OEHasPackage(['libvirt-libvirtd'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_libvirtd_answers(self):
        self.run_ok('systemctl is-active libvirtd.service || systemctl start libvirtd.service')
        self.run_ok('%s version' % VIRSH, timeout=60)

    @OEHasPackage(['vmclient-services'])
    @OETestDepends(['vmclient.VMClientHostTest.test_libvirtd_answers'])
    def test_services_are_running(self):
        self.run_ok('systemctl start vmclient-powerd.service', timeout=60)
        self.run_ok('systemctl is-active vmclient-powerd.service')
        self.run_ok('busctl --system status %s' % BUS_NAME)

    @OETestDepends(['vmclient.VMClientHostTest.test_libvirtd_answers'])
    def test_kvm_is_usable(self):
        status, _ = self.target.run('grep -qwE "vmx|svm" /proc/cpuinfo')
        if status != 0:
            self.skipTest('the (virtual) CPU exposes neither VT-x nor AMD-V: run QEMU with -cpu host and nested KVM')
        self.run_ok('test -c /dev/kvm')
        output = self.run_ok('%s domcapabilities --virttype kvm' % VIRSH, timeout=60)
        self.assertIn('<domain>kvm</domain>', output)

    @OEHasPackage(['vmclient-services'])
    @OETestDepends(['vmclient.VMClientHostTest.test_services_are_running'])
    def test_power_manager_pauses_and_resumes_a_firmware_only_vm(self):
        status, _ = self.target.run('test -c /dev/kvm')
        virt_type = 'kvm' if status == 0 else 'qemu'
        # 64 MiB and no disk: the guest sits in its firmware, which is all a
        # pause/resume needs.
        xml = ("<domain type='%s'><name>%s</name><memory unit='MiB'>64</memory>"
               "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
               "<devices><graphics type='vnc' autoport='yes' listen='127.0.0.1'/></devices></domain>"
               % (virt_type, TEST_DOMAIN))
        self.run_ok("echo \"%s\" > /tmp/%s.xml" % (xml, TEST_DOMAIN))
        self.run_ok('%s create /tmp/%s.xml' % (VIRSH, TEST_DOMAIN), timeout=120)
        try:
            self.run_ok('busctl --system call %s %s %s PauseAll' % (BUS_NAME, POWER_PATH, POWER_IFACE), timeout=60)
            self.assertEqual(self.wait_for_state('paused'), 'paused')
            self.run_ok('busctl --system call %s %s %s ResumeAll' % (BUS_NAME, POWER_PATH, POWER_IFACE), timeout=60)
            self.assertEqual(self.wait_for_state('running'), 'running')
        finally:
            self.target.run('%s destroy %s' % (VIRSH, TEST_DOMAIN))
            self.target.run('rm -f /tmp/%s.xml' % TEST_DOMAIN)

    @OEHasPackage(['libvirt-libvirtd'])
    @OETestDepends(['vmclient.VMClientHostTest.test_libvirtd_answers'])
    def test_qemu_offers_spice_and_usb_redirection(self):
        # provd defines every domain with SPICE graphics and usbredir
        # channels: libvirt refuses them unless QEMU was built with both.
        output = self.run_ok('%s domcapabilities --virttype qemu --arch x86_64' % VIRSH, timeout=60)
        graphics = output.split('<graphics', 1)[-1].split('</graphics>', 1)[0]
        self.assertIn('<value>spice</value>', graphics, msg=output)
        redirdev = output.split('<redirdev', 1)[-1].split('</redirdev>', 1)[0]
        self.assertIn('<value>usb</value>', redirdev, msg=output)

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_firmware_descriptors_name_existing_edk2_images(self):
        # libvirt's firmware autoselection (<os firmware='efi'>) reads QEMU's
        # firmware descriptors; each must name images that exist.
        script = ("import glob, json, os, sys\n"
                  "found = 0\n"
                  "for path in glob.glob('/usr/share/qemu/firmware/*.json'):\n"
                  "    doc = json.load(open(path))\n"
                  "    if not any(t.get('architecture') == 'x86_64' for t in doc.get('targets', [])):\n"
                  "        continue\n"
                  "    found += 1\n"
                  "    for part in ('executable', 'nvram-template'):\n"
                  "        name = doc.get('mapping', {}).get(part, {}).get('filename')\n"
                  "        if name and not os.path.exists(name):\n"
                  "            sys.exit('%s: %s %s is missing' % (path, part, name))\n"
                  "sys.exit(0 if found else 'no x86_64 firmware descriptor in /usr/share/qemu/firmware')\n")
        self.run_ok("python3 -c \"%s\"" % script)

    @OEHasPackage(['libvirt-libvirtd'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_libvirt_runs_qemu_sandboxed_without_sample_keys(self):
        self.run_ok("grep -qx 'seccomp_sandbox = 1' /etc/libvirt/qemu.conf")
        for key in ('/etc/pki/libvirt/private/serverkey.pem', '/etc/pki/libvirt/private/cakey.pem'):
            status, _ = self.target.run('test -e %s' % key)
            self.assertNotEqual(status, 0, msg="%s: a sample key shared by every image of the build" % key)

    @OETestDepends(['vmclient.VMClientHostTest.test_state_lives_on_the_data_partition'])
    def test_persistent_directories_are_bound_from_the_data_partition(self):
        data = self.run_ok('findmnt -n -o SOURCE %s' % DATA_DIR).strip()
        for where in ('/etc/libvirt', '/var/lib/libvirt', '/var/log/journal'):
            # A bind shows the data partition as its source, an overlay
            # (mount-copybind's first choice) its upper directory on it;
            # neither is there when the unit skipped itself (tmpfs).
            real = self.run_ok('readlink -f %s' % where).strip()
            mount = self.run_ok('findmnt -n -o SOURCE,FSTYPE,OPTIONS %s' % real).strip()
            self.assertTrue(mount.startswith(data) or ('upperdir=%s/' % DATA_DIR) in mount,
                            msg="%s is not on the data partition (%s): %s" % (where, data, mount))
            self.run_ok('touch %s/.vmclient-oeqa-probe && rm %s/.vmclient-oeqa-probe' % (real, real))

    @OETestDepends(['vmclient.VMClientHostTest.test_state_lives_on_the_data_partition'])
    def test_systemd_repart_manages_the_data_partition(self):
        # First boot grows the data partition to the disk: repart ran, and
        # its definition matches the partition it must grow (a dry run
        # changes nothing and fails on a definition it cannot apply).
        result = self.run_ok('systemctl show -p Result --value systemd-repart.service').strip()
        self.assertEqual(result, 'success', msg="systemd-repart.service: %s" % result)
        output = self.run_ok('systemd-repart --dry-run=yes --no-pager 2>&1', timeout=60)
        self.assertIn('vmdata', output)

    @OEHasPackage(['libvirt-libvirtd'])
    @OETestDepends(['vmclient.VMClientHostTest.test_libvirtd_answers'])
    def test_persistent_domain_network_and_journal_survive_a_reboot(self):
        domain = ("<domain type='qemu'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
                  "<os><type arch='x86_64' machine='pc'>hvm</type></os></domain>" % PERSIST_DOMAIN)
        network = ("<network><name>%s</name><bridge name='vmcoeqa0'/>"
                   "<ip address='192.168.251.1' netmask='255.255.255.0'/></network>" % PERSIST_NETWORK)
        self.run_ok("echo \"%s\" > /tmp/%s.xml" % (domain, PERSIST_DOMAIN))
        self.run_ok("echo \"%s\" > /tmp/%s.xml" % (network, PERSIST_NETWORK))
        self.run_ok('%s define /tmp/%s.xml' % (VIRSH, PERSIST_DOMAIN), timeout=60)
        self.run_ok('%s net-define /tmp/%s.xml' % (VIRSH, PERSIST_NETWORK), timeout=60)
        try:
            self.run_ok('journalctl --flush')
            marker = 'vmclient-oeqa-marker-%d' % int(time.time())
            self.run_ok('logger -t vmclient-oeqa %s && journalctl --sync' % marker)
            self.reboot()
            self.run_ok('%s dominfo %s' % (VIRSH, PERSIST_DOMAIN), timeout=60)
            self.run_ok('%s net-info %s' % (VIRSH, PERSIST_NETWORK), timeout=60)
            self.run_ok('%s start %s' % (VIRSH, PERSIST_DOMAIN), timeout=120)
            boots = self.run_ok('journalctl --list-boots --no-pager | wc -l').strip()
            self.assertGreaterEqual(int(boots), 2, msg="the journal kept no earlier boot")
            self.run_ok('journalctl -b -1 -t vmclient-oeqa --no-pager | grep -q %s' % marker)
        finally:
            self.target.run('%s destroy %s' % (VIRSH, PERSIST_DOMAIN))
            self.target.run('%s undefine %s' % (VIRSH, PERSIST_DOMAIN))
            self.target.run('%s net-undefine %s' % (VIRSH, PERSIST_NETWORK))

    def reboot(self):
        # A reboot inside the guest: QEMU keeps running (and keeps its
        # snapshot overlay), so what the host wrote is still there.
        before = self.run_ok('cat /proc/sys/kernel/random/boot_id').strip()
        self.target.run('systemctl reboot', timeout=10, ignore_ssh_fails=True)
        deadline = time.time() + 600
        while time.time() < deadline:
            time.sleep(10)
            status, output = self.target.run('cat /proc/sys/kernel/random/boot_id', timeout=20,
                                             ignore_ssh_fails=True)
            if status == 0 and output.strip() and output.strip() != before:
                self.run_ok('systemctl is-system-running --wait || true', timeout=300)
                return
        self.fail("the host did not come back within 10 minutes of a reboot")

    def wait_for_state(self, expected):
        # The API replies when libvirt has done the work; allow a moment
        # for the state to be reported all the same.
        state = None
        for _ in range(20):
            state = self.run_ok('%s domstate %s' % (VIRSH, TEST_DOMAIN)).strip()
            if state == expected:
                break
            time.sleep(0.5)
        return state
