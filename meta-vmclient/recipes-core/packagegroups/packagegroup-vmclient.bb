SUMMARY = "vmclient laptop host: hypervisor, services and tools"
DESCRIPTION = "Role packages of the vmclient host: the hypervisor (QEMU/KVM, \
               libvirt), the vmclient services and the system pieces they \
               rely on, console tools, and debug aids for developer images."
SECTION = "base"
LICENSE = "MIT"

PACKAGE_ARCH = "${MACHINE_ARCH}"

inherit packagegroup features_check

REQUIRED_DISTRO_FEATURES = "kvm systemd virtualization"

PACKAGES = "\
    ${PN} \
    ${PN}-debug \
    ${PN}-hypervisor \
    ${PN}-services \
    ${PN}-tools \
"

# What the image installs: every role except the debug aids.
RDEPENDS:${PN} = "\
    ${PN}-hypervisor \
    ${PN}-services \
    ${PN}-tools \
"

# Debugging aids, not in the product image (conf/kas/dev.yml adds them).
RDEPENDS:${PN}-debug = "\
    gdb \
    strace \
    vmclient-services-ptest \
"

# QEMU/KVM and the libvirt daemons that run the VMs; libvirt-python is the
# binding the services use; OVMF boots UEFI guests; dnsmasq and nftables
# serve libvirt's NAT networks; ebtables and iptables are what libvirt's
# nwfilter driver programs for the clean-traffic filter on every VM NIC
# (provision.toml networks.anti_spoofing).
RDEPENDS:${PN}-hypervisor = "\
    dnsmasq \
    ebtables \
    iptables \
    libvirt \
    libvirt-libvirtd \
    libvirt-python \
    nftables \
    ovmf \
    qemu \
"

# The vmclient daemons, the admin's public key, and the system pieces they
# rely on: polkit for authorisation, volatile-binds for state on the data
# partition under a read-only root, cryptsetup for encrypted storage.
RDEPENDS:${PN}-services = "\
    cryptsetup \
    polkit \
    vmclient-admin-key \
    vmclient-services \
    volatile-binds \
"

# Small tools for support staff on the host console.
RDEPENDS:${PN}-tools = "\
    iproute2 \
    libvirt-virsh \
    pciutils \
    usbutils \
"

# Kernel modules: recommended, as a kernel may build them in.
RRECOMMENDS:${PN}-hypervisor = "\
    kernel-module-bridge \
    kernel-module-dm-crypt \
    kernel-module-kvm \
    kernel-module-kvm-amd \
    kernel-module-kvm-intel \
    kernel-module-tun \
    kernel-module-vhost-net \
"
