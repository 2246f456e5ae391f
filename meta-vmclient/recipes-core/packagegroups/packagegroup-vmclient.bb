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
    ${PN}-desktop \
    ${PN}-drivers \
    ${PN}-hypervisor \
    ${PN}-laptop \
    ${PN}-services \
    ${PN}-tools \
"

# What the image installs: every role except the debug aids.
RDEPENDS:${PN} = "\
    ${PN}-desktop \
    ${PN}-drivers \
    ${PN}-hypervisor \
    ${PN}-laptop \
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
# binding the services use.  UEFI guests boot the edk2 firmware QEMU itself
# installs, with its firmware descriptors (qemu-common:
# /usr/share/qemu/edk2-x86_64-*.fd, /usr/share/qemu/firmware/*.json), which
# is what libvirt's firmware autoselection reads; the "ovmf" recipe fills no
# "ovmf" package (only ovmf-shell-efi) and is for runqemu on the build host.
# nftables serves libvirt's NAT networks (libvirt-libvirtd brings dnsmasq);
# ebtables and iptables are what libvirt's nwfilter driver programs for the
# clean-traffic filter on every VM NIC (provision.toml
# networks.anti_spoofing).
RDEPENDS:${PN}-hypervisor = "\
    ebtables \
    iptables \
    libvirt \
    libvirt-libvirtd \
    libvirt-python \
    nftables \
    qemu \
"

# The vmclient daemons, the admin's public key, and the system pieces they
# rely on: polkit for authorisation, vmclient-persist for state on the data
# partition under a read-only root (it brings volatile-binds),
# cryptsetup for LUKS, systemd-cryptenroll (systemd-crypt, only recommended by
# systemd) for the recovery key vmclient-recovery-key.service escrows;
# host updates: rauc with its configuration and keyring (rauc-conf, which
# refuses to build without VMCLIENT_RAUC_KEYRING) and the boot backend
# (vmclient-update).
RDEPENDS:${PN}-services = "\
    cryptsetup \
    polkit \
    rauc \
    rauc-conf \
    systemd-crypt \
    vmclient-admin-key \
    vmclient-persist \
    vmclient-services \
    vmclient-update \
"

# A laptop: NetworkManager for wired and Wi-Fi networks (nmcli on the
# console), thermald for Intel thermal management, fwupd for the vendors'
# system firmware updates (LVFS: Dell, HP, Lenovo).
RDEPENDS:${PN}-laptop = "\
    fwupd \
    networkmanager-daemon \
    networkmanager-nmcli \
    networkmanager-wifi \
    thermald \
"

# The desktop (issue 15): Weston with its kiosk shell, started on the seat
# by weston-init's weston.service as the unprivileged user "weston", runs
# vmclient-shell full screen (recipes-graphics/wayland/weston-init.bbappend).
# Mesa's drivers (iris for Intel, radeonsi for AMD GPUs) for Weston's GL
# renderer.
# The shell plays and records the VMs' SPICE audio through spice-gtk's GStreamer
# backend (autoaudiosink/autoaudiosrc, which find ALSA's; no sound server).
RDEPENDS:${PN}-desktop = "\
    gstreamer1.0-plugins-base-alsa \
    gstreamer1.0-plugins-base-app \
    gstreamer1.0-plugins-base-audioconvert \
    gstreamer1.0-plugins-base-audioresample \
    gstreamer1.0-plugins-good-autodetect \
    mesa-megadriver \
    vmclient-shell \
    weston \
    weston-init \
"

# Small tools for support staff on the host console (findmnt: also what
# the oeqa runtime tests call).
RDEPENDS:${PN}-tools = "\
    iproute2 \
    libvirt-virsh \
    pciutils \
    usbutils \
    util-linux-findmnt \
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

# Firmware of current Dell/HP/Lenovo laptops, one linux-firmware package per
# device family instead of all of linux-firmware: Intel (i915, xe) and AMD
# (amdgpu) GPUs, Wi-Fi (iwlwifi, ath11k, ath12k, MediaTek mt79xx, Realtek
# rtw88/rtw89: rtl8822, rtl8852) and Bluetooth (Intel ibt, Qualcomm qca,
# MediaTek, Realtek rtl_bt in the same rtl packages), Realtek Ethernet
# (rtl8168, and rtl-nic for the rest: 2.5G RTL8125, USB RTL8156 docks).
# iwlwifi, ibt, ath11k, ath12k, qca and amdgpu are the recipe's meta packages
# recommending every per-device package; scripts/check-layer-resolve checks
# that each entry, or what it recommends, has files.  Audio: the pinned
# linux-firmware packages no SOF firmware (intel/sof*), and no pinned layer
# has sof-bin (PLAN-encryption.md, "Also remaining").  The kernel modules come
# with kernel-modules (packagegroup-base; the drivers are configured in the
# kernel fragment vmclient-laptop.cfg).  Recommended: a machine without the
# hardware builds without them.
RRECOMMENDS:${PN}-drivers = "\
    linux-firmware-amdgpu \
    linux-firmware-ath11k \
    linux-firmware-ath12k \
    linux-firmware-i915 \
    linux-firmware-ibt \
    linux-firmware-iwlwifi \
    linux-firmware-mediatek \
    linux-firmware-qca \
    linux-firmware-rtl-nic \
    linux-firmware-rtl8168 \
    linux-firmware-rtl8822 \
    linux-firmware-rtl8852 \
    linux-firmware-xe \
"
