# SPDX-License-Identifier: MIT
#
# Runtime tests of the vmclient host image for `bitbake -c testimage
# vmclient-image` (TEST_SUITES += "vmclient"): the services run, libvirtd
# answers, KVM is usable, and the power manager's D-Bus API pauses and
# resumes a firmware-only VM.

import time

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage

BUS_NAME = "org.vmclient.VMClient1"
POWER_PATH = "/org/vmclient/VMClient1/Power"
POWER_IFACE = "org.vmclient.VMClient1.Power"
VIRSH = "virsh -c qemu:///system"
TEST_DOMAIN = "vmclient-oeqa-fw"


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
