SUMMARY = "vmclient laptop host image: Linux + KVM + libvirt + vmclient services"
DESCRIPTION = "The image IT writes onto a laptop: a read-only host that \
               runs only the hypervisor and the vmclient services; users \
               work inside VMs."
SECTION = "images"
LICENSE = "MIT"

# packagegroup-base is the one consumer of the machine's
# MACHINE_EXTRA_RRECOMMENDS (kernel-modules: netfilter for libvirt's NAT
# and nwfilter, vfio, Wi-Fi and GPU drivers) and of the distro and machine
# features (Wi-Fi, Bluetooth, ALSA, USB host tools).
IMAGE_INSTALL = "packagegroup-core-boot packagegroup-base packagegroup-vmclient"
IMAGE_LINGUAS = ""

# The root filesystem is read-only; state lives on the data partition.
IMAGE_FEATURES += "read-only-rootfs"

# An EFI disk image with ESP, root and data partition, plus a bmap for
# bmaptool.  "=", not "?=": both machines set WKS_FILE with "?=" in their
# configuration, which is parsed first and would win (genericx86.wks.in,
# qemux86-directdisk.wks).  scripts/check-layer asserts WKS_FULL_PATH.
WKS_FILE = "vmclient-efi.wks.in"
IMAGE_FSTYPES:append = " wic.zst wic.bmap"

inherit features_check
REQUIRED_DISTRO_FEATURES = "kvm systemd virtualization"

inherit core-image
