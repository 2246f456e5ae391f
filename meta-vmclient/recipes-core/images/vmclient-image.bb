SUMMARY = "vmclient laptop host image: Linux + KVM + libvirt + vmclient services"
DESCRIPTION = "The image IT writes onto a laptop: a read-only host that \
               runs only the hypervisor and the vmclient services; users \
               work inside VMs."
SECTION = "images"
LICENSE = "MIT"

IMAGE_INSTALL = "packagegroup-core-boot packagegroup-vmclient"
IMAGE_LINGUAS = ""

# The root filesystem is read-only; state lives on the data partition.
IMAGE_FEATURES += "read-only-rootfs"

# An EFI disk image with ESP, root and data partition, plus a bmap for
# bmaptool.
WKS_FILE ?= "vmclient-efi.wks.in"
IMAGE_FSTYPES:append = " wic.zst wic.bmap"

inherit features_check
REQUIRED_DISTRO_FEATURES = "kvm systemd virtualization"

inherit core-image
