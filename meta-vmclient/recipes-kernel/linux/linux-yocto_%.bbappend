# KVM host kernel for the vmclient distro.  Gated on the distro and on the
# "kvm" distro feature, so adding meta-vmclient alone changes no kernel.
#
# The KVM host support itself comes from the kernel-cache feature
# features/kvm/qemu-kvm-enable.scc (meta-virtualization enables it too for
# "kvm"; naming it here keeps this layer correct on its own).
# vmclient-kvm.scc adds only what the cache lacks.

FILESEXTRAPATHS:prepend:vmclient := "${THISDIR}/linux-yocto:"

SRC_URI:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'file://vmclient-kvm.scc file://vmclient-kvm.cfg', '', d)}"

KERNEL_FEATURES:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'features/kvm/qemu-kvm-enable.scc', '', d)}"

KERNEL_MODULE_AUTOLOAD:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'kvm vhost_net tun', '', d)}"
