# KVM host kernel for the vmclient distro.  Gated on the distro and on the
# "kvm" distro feature, so adding meta-vmclient alone changes no kernel.
#
# The KVM host support itself comes from the kernel-cache feature
# features/kvm/qemu-kvm-enable.scc (meta-virtualization enables it too for
# "kvm"; naming it here keeps this layer correct on its own).
# features/vmclient/vmclient-kvm.scc adds only what the cache lacks.  It
# comes from a kmeta directory of this layer and is named once, in
# KERNEL_FEATURES: a .cfg listed in SRC_URI as well would be applied twice.

FILESEXTRAPATHS:prepend:vmclient := "${THISDIR}/linux-yocto:"

SRC_URI:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'file://vmclient-kmeta;type=kmeta', '', d)}"

KERNEL_FEATURES:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'features/kvm/qemu-kvm-enable.scc features/vmclient/vmclient-kvm.scc', '', d)}"

KERNEL_MODULE_AUTOLOAD:append:vmclient = " ${@bb.utils.contains('DISTRO_FEATURES', 'kvm', 'kvm vhost_net tun', '', d)}"
