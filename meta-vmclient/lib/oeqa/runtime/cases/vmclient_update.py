# SPDX-License-Identifier: MIT
#
# Runtime tests of the A/B host update (meta-vmclient/PLAN-update.md) for
# `bitbake -c testimage vmclient-image` (TEST_SUITES += "vmclient_update",
# conf/kas/testimage.yml, which also builds vmclient-bundle first): the
# factory image runs slot A from a dm-verity device; RAUC refuses a damaged
# bundle before it touches a slot; it installs the build's bundle into
# slot B, whose boot loader entry goes on trial (+3 tries); the host
# restarts into B, verified again, reaches boot-complete.target through
# the services' bus check and systemd-bless-boot marks B good; slot A stays
# the fallback.  Run on a build host under runqemu (OVMF, swtpm); not run
# by this project's CI (no Yocto build there).

import os
import time

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage

ESP = '/efi'
ENTRIES = ESP + '/loader/entries'
# On the data partition: the root is read-only and /tmp is RAM.
BUNDLE = '/var/lib/vmclient/oeqa-update.raucb'
DAMAGED = '/var/lib/vmclient/oeqa-damaged.raucb'


class VMClientUpdateTest(OERuntimeTestCase):

    def run_ok(self, command, timeout=None):
        status, output = self.target.run(command, timeout=timeout)
        self.assertEqual(status, 0, msg="%s\n%s" % (command, output))
        return output

    def booted_slot(self):
        for word in self.run_ok('cat /proc/cmdline').split():
            if word.startswith('rauc.slot='):
                return word.split('=', 1)[1]
        self.fail('no rauc.slot= on the kernel command line')

    def assert_verified_root(self):
        # veritysetup: cryptsetup, which the image carries for the data partition
        status = self.run_ok('veritysetup status root')
        self.assertRegex(status, r'(?m)^\s*type:\s+VERITY$', msg="/dev/mapper/root is not dm-verity: %s" % status)
        self.assertRegex(status, r'(?m)^\s*status:\s+verified$', msg=status)
        # the UKI's restart-on-corruption: a modified block restarts the laptop
        self.assertRegex(status, r'(?m)^\s*flags:.*\brestart_on_corruption\b', msg=status)

    def entries(self):
        return sorted(self.run_ok('ls %s' % ENTRIES).split())

    def bundle_path(self):
        deploy = self.td.get('DEPLOY_DIR_IMAGE')
        path = os.path.join(deploy, 'vmclient-bundle-%s.raucb' % self.td.get('MACHINE'))
        self.assertTrue(os.path.exists(path), msg="no bundle at %s (bitbake vmclient-bundle)" % path)
        return path

    def reboot(self):
        before = self.run_ok('cat /proc/sys/kernel/random/boot_id').strip()
        self.target.run('systemctl reboot', timeout=10, ignore_ssh_fails=True)
        deadline = time.time() + 900
        while time.time() < deadline:
            time.sleep(10)
            status, output = self.target.run('cat /proc/sys/kernel/random/boot_id', timeout=20,
                                             ignore_ssh_fails=True)
            if status == 0 and output.strip() and output.strip() != before:
                self.run_ok('systemctl is-system-running --wait || true', timeout=300)
                return
        self.fail("the host did not come back within 15 minutes of a reboot")

    @OEHasPackage(['rauc', 'vmclient-update'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_factory_image_runs_slot_a_from_a_verified_root(self):
        self.assertEqual(self.booted_slot(), 'a')
        self.assert_verified_root()
        source = self.run_ok('findmnt -n -o SOURCE /').strip()
        self.assertEqual(source, '/dev/mapper/root')
        self.assertEqual(self.entries(), ['vmclient-a.conf'])
        status = self.run_ok('rauc status')
        self.assertIn('rootfs.0', status)
        self.assertEqual(self.run_ok('/usr/lib/vmclient/rauc-boot-backend get-primary').strip(), 'a')

    @OEHasPackage(['rauc'])
    @OETestDepends(['vmclient_update.VMClientUpdateTest.test_factory_image_runs_slot_a_from_a_verified_root'])
    def test_rauc_refuses_a_damaged_bundle_before_writing_a_slot(self):
        self.target.copyTo(self.bundle_path(), BUNDLE)
        # The signature's size is the bundle's last 8 bytes (big-endian):
        # flip its lowest byte.
        flip = ("import sys; f = open(sys.argv[1], 'r+b'); f.seek(-1, 2); b = f.read(1); "
                "f.seek(-1, 2); f.write(bytes([b[0] ^ 0xff]))")
        self.run_ok('cp %s %s && python3 -c "%s" %s' % (BUNDLE, DAMAGED, flip, DAMAGED), timeout=300)
        before = self.entries()
        status, output = self.target.run('rauc install %s' % DAMAGED, timeout=300)
        self.target.run('rm -f %s' % DAMAGED)
        self.assertNotEqual(status, 0, msg="a damaged bundle was installed: %s" % output)
        self.assertEqual(self.entries(), before, msg="the refused bundle changed the boot entries")
        self.assertEqual(self.run_ok('/usr/lib/vmclient/rauc-boot-backend get-state b').strip(), 'bad')

    @OEHasPackage(['rauc'])
    @OETestDepends(['vmclient_update.VMClientUpdateTest.test_rauc_refuses_a_damaged_bundle_before_writing_a_slot'])
    def test_bundle_installs_into_slot_b_which_boots_verified_and_is_blessed(self):
        info = self.run_ok('rauc info %s' % BUNDLE, timeout=300)
        self.assertRegex(info, r'(?im)^\s*bundle format:\s+verity\b', msg=info)
        self.run_ok('rauc install %s' % BUNDLE, timeout=1800)
        self.assertEqual(self.entries(), ['vmclient-a.conf', 'vmclient-b+3.conf'])
        self.run_ok('test -s %s/EFI/vmclient/vmclient-b.efi' % ESP)
        self.assertEqual(self.run_ok('/usr/lib/vmclient/rauc-boot-backend get-primary').strip(), 'b')
        self.reboot()
        self.assertEqual(self.booted_slot(), 'b')
        self.assert_verified_root()
        self.run_ok('systemctl is-active boot-complete.target', timeout=300)
        self.run_ok('systemctl is-active vmclient-boot-check.service')
        deadline = time.time() + 120
        while time.time() < deadline and self.entries() != ['vmclient-a.conf', 'vmclient-b.conf']:
            time.sleep(5)
        self.assertEqual(self.entries(), ['vmclient-a.conf', 'vmclient-b.conf'],
                         msg="systemd-bless-boot did not mark slot b good")
        self.assertEqual(self.run_ok('/usr/lib/vmclient/rauc-boot-backend get-state a').strip(), 'good')
        self.target.run('rm -f %s' % BUNDLE)
