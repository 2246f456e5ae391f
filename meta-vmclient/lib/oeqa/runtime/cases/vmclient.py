# SPDX-License-Identifier: MIT
#
# Runtime tests of the vmclient host image for `bitbake -c testimage
# vmclient-image` (TEST_SUITES += "vmclient"): the services run, libvirtd
# answers, KVM is usable, the power manager's D-Bus API pauses and resumes a
# firmware-only VM, QEMU has SPICE and USB redirection and its firmware
# descriptors, and a persistent domain, a persistent network and the
# journal survive a reboot of the host (the read-only root keeps nothing:
# they live on the data partition).  The data partition is LUKS2 with its
# key sealed to the TPM2 (runqemu: swtpm on the build host, see
# conf/kas/testimage.yml).  The desktop: Weston runs vmclient-shell as an
# unprivileged user on the seat, and the shell shows a VM that starts (the
# host's screen, read through QEMU's monitor, shows the VM's zone colour).

import os
import tempfile
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
DATA_PARTITION = "/dev/disk/by-partlabel/vmdata"
SHELL_DOMAIN = "vmclient-oeqa-shown"
VM_NS = "https://vmclient.org/xmlns/vm/1"
# vmclient.shell.state.ZONE_COLOURS, and the frame around the VM's picture
# (vmclient.shell.window.FRAME_PX).
BUSINESS_BLUE = (0x1E, 0x5A, 0xC8)
FRAME_PX = 6


def read_ppm(path):
    """(width, height, pixels) of a binary PPM (P6, maxval 255): QEMU's screendump."""
    with open(path, 'rb') as f:
        data = f.read()
    fields = []
    pos = 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b'#':
            pos = data.index(b'\n', pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end
    if fields[0] != b'P6' or fields[3] != b'255':
        raise ValueError('%s: not a P6 PPM with maxval 255: %r' % (path, fields))
    width, height = int(fields[1]), int(fields[2])
    return width, height, data[pos + 1:pos + 1 + width * height * 3]


def pixel(image, x, y):
    width, _height, pixels = image
    i = (y * width + x) * 3
    return tuple(pixels[i:i + 3])


def near(colour, expected, tolerance=24):
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


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
        for where in ('/etc/libvirt', '/var/lib/libvirt', '/var/log/journal', '/home'):
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
            machine_id = self.run_ok('cat /etc/machine-id').strip()
            self.reboot()
            # the ID the first boot kept on the data partition, not a new transient one
            self.assertEqual(self.run_ok('cat /etc/machine-id').strip(), machine_id)
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

    @OEHasPackage(['cryptsetup'])
    @OETestDepends(['vmclient.VMClientHostTest.test_state_lives_on_the_data_partition'])
    def test_data_partition_is_luks2_unlocked_by_the_tpm2(self):
        source = self.run_ok('findmnt -n -o SOURCE %s' % DATA_DIR).strip()
        self.assertEqual(source, '/dev/mapper/vmdata', msg="%s is not the unlocked LUKS volume" % DATA_DIR)
        dump = self.run_ok('cryptsetup luksDump %s' % DATA_PARTITION)
        self.assertRegex(dump, r'(?m)^Version:\s+2$', msg=dump)
        self.assertIn('systemd-tpm2', dump, msg="no TPM2 token: %s" % dump)
        slots = self.run_ok('systemd-cryptenroll %s' % DATA_PARTITION)
        self.assertRegex(slots, r'(?m)^\s*\d+\s+tpm2\b', msg=slots)
        # Nothing of the volume key or the sealed secret is on the root.
        status, output = self.target.run('grep -rl "BEGIN" /etc/cryptsetup-keys.d 2>/dev/null')
        self.assertNotEqual(status, 0, msg="key files on the root: %s" % output)

    @OEHasPackage(['weston-init', 'vmclient-shell'])
    @OETestDepends(['ssh.SSHTest.test_ssh'])
    def test_weston_runs_the_shell_as_an_unprivileged_user_on_the_seat(self):
        self.run_ok('systemctl is-active weston.service', timeout=60)
        weston = self.process_users('weston')
        self.assertTrue(weston and 'root' not in weston, msg="Weston runs as %s" % weston)
        user = weston[0]
        deadline = time.time() + 120
        shell = []
        while time.time() < deadline and not shell:
            shell = self.process_users('vmclient-shell')
            time.sleep(0 if shell else 2)
        self.assertEqual(set(shell), {user}, msg="vmclient-shell runs as %s, Weston as %s" % (shell, user))
        sessions = self.run_ok('loginctl list-sessions --no-legend')
        mine = [line.split()[0] for line in sessions.splitlines() if user in line.split()]
        self.assertTrue(mine, msg="no logind session for %s: %s" % (user, sessions))
        props = self.run_ok('loginctl show-session %s -p Seat -p Active -p Remote' % mine[0])
        self.assertIn('Seat=seat0', props)
        self.assertIn('Active=yes', props)
        self.assertIn('Remote=no', props)

    @OEHasPackage(['vmclient-shell', 'libvirt-libvirtd'])
    @OETestDepends(['vmclient.VMClientHostTest.test_weston_runs_the_shell_as_an_unprivileged_user_on_the_seat',
                    'vmclient.VMClientHostTest.test_services_are_running'])
    def test_the_shell_shows_a_vm_that_starts(self):
        runner = getattr(self.target, 'runner', None)
        if runner is None or not hasattr(runner, 'run_monitor'):
            self.skipTest('the host screen is read through QEMU\'s monitor: runqemu targets only')
        # Before: no VM of vmclient's runs, the shell shows its "no VM" page.
        before = self.host_screen()
        frame = (FRAME_PX // 2, before[1] // 2)
        self.assertFalse(near(pixel(before, *frame), BUSINESS_BLUE),
                         msg="the business colour is on the screen before any VM runs")
        status, _ = self.target.run('test -c /dev/kvm')
        virt_type = 'kvm' if status == 0 else 'qemu'
        # A business VM as provd defines them (its metadata, SPICE with no
        # listening socket: the shell gets its display from provd).
        xml = ("<domain type='%s'><name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
               "<metadata><vmc:vm xmlns:vmc='%s' kind='business'/></metadata>"
               "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
               "<devices><graphics type='spice'><listen type='none'/></graphics>"
               "<video><model type='qxl'/></video></devices></domain>" % (virt_type, SHELL_DOMAIN, VM_NS))
        self.run_ok("echo \"%s\" > /tmp/%s.xml" % (xml, SHELL_DOMAIN))
        self.run_ok('%s create /tmp/%s.xml' % (VIRSH, SHELL_DOMAIN), timeout=120)
        try:
            deadline = time.time() + 60
            shown = None
            while time.time() < deadline:
                shown = self.host_screen()
                if near(pixel(shown, *frame), BUSINESS_BLUE) and near(pixel(shown, shown[0] // 2, 2), BUSINESS_BLUE):
                    break
                time.sleep(2)
            self.assertTrue(near(pixel(shown, *frame), BUSINESS_BLUE),
                            msg="the shell does not show the business VM in its frame: %s at %s"
                                % (pixel(shown, *frame), frame))
        finally:
            self.target.run('%s destroy %s' % (VIRSH, SHELL_DOMAIN))
            self.target.run('rm -f /tmp/%s.xml' % SHELL_DOMAIN)

    def process_users(self, name):
        """The users running a process whose command line names ``name``
        (from /proc: the image has no pgrep)."""
        script = ("import glob, pwd, sys\n"
                  "for path in glob.glob('/proc/[0-9]*/cmdline'):\n"
                  "    try:\n"
                  "        args = open(path, 'rb').read().split(b'\\\\0')\n"
                  "        uid = open(path[:-7] + 'status').read().split('Uid:')[1].split()[0]\n"
                  "    except OSError:\n"
                  "        continue\n"
                  "    if any(a.decode(errors='replace').rsplit('/', 1)[-1] == sys.argv[1] for a in args[:2]):\n"
                  "        print(pwd.getpwuid(int(uid)).pw_name)\n")
        output = self.run_ok("python3 -c \"%s\" %s" % (script, name))
        return output.split()

    def host_screen(self):
        """The host's screen as QEMU shows it (QMP screendump), decoded."""
        fd, path = tempfile.mkstemp(prefix='vmclient-oeqa-screen', suffix='.ppm')
        os.close(fd)
        try:
            self.target.runner.run_monitor('screendump', args={'filename': path})
            return read_ppm(path)
        finally:
            os.unlink(path)

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
