# libvirt for the vmclient host (distro override "vmclient" only).
#
# - Only the QEMU driver: no lxc, openvz, vbox, vmware, esx code on a host
#   that runs QEMU/KVM guests alone.
# - No "gnutls" sample PKI: with it the recipe generates a CA, server and
#   client key at build time and installs them, the same on every laptop of
#   a build (and the CA's private key with them).  The host listens on no
#   TLS socket; libvirt still links gnutls for its own crypto.
PACKAGECONFIG:remove:vmclient = "gnutls lxc openvz vbox vmware esx"

# libvirt-guests would managed-save every VM on shutdown, ordered to stop
# before vmclient-powerd, which owns that decision (power.toml): installed,
# not enabled.
SYSTEMD_SERVICE:${PN}-libvirtd:remove:vmclient = "libvirt-guests.service"

# QEMU's seccomp sandbox: the recipe turns it off ("seccomp_sandbox = 0");
# the vmclient distro builds QEMU with seccomp, so libvirt starts every QEMU
# with its sandbox ("-sandbox on,obsolete=deny,elevateprivileges=deny,
# spawn=deny,resourcecontrol=deny").
do_install:append:vmclient() {
    sed -i -e 's/^seccomp_sandbox = 0$/seccomp_sandbox = 1/' ${D}${sysconfdir}/libvirt/qemu.conf
    if ! grep -q '^seccomp_sandbox = 1$' ${D}${sysconfdir}/libvirt/qemu.conf; then
        bbfatal "qemu.conf: could not turn on seccomp_sandbox"
    fi
}
