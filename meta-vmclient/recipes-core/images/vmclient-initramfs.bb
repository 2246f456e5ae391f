SUMMARY = "vmclient initramfs: opens the root slot through dm-verity"
DESCRIPTION = "The initramfs of the vmclient UKIs: udev finds the root \
               slot's partition, the vmclient-verity module opens it \
               through dm-verity with the root hash of the UKI's command \
               line, initramfs-framework mounts /dev/mapper/root read-only \
               and switches to it."
SECTION = "images"
LICENSE = "MIT"

INITRAMFS_SCRIPTS = "\
    initramfs-framework-base \
    initramfs-module-udev \
    initramfs-module-rootfs \
    initramfs-module-vmclient-verity \
"

PACKAGE_INSTALL = "${INITRAMFS_SCRIPTS} ${VIRTUAL-RUNTIME_base-utils} udev base-passwd"

# Only what the initramfs needs.
IMAGE_FEATURES = ""
IMAGE_LINGUAS = ""

# No kernel in the initramfs (modules would pull the kernel image).
PACKAGE_EXCLUDE = "kernel-image-*"

IMAGE_FSTYPES = "${INITRAMFS_FSTYPES}"
IMAGE_NAME_SUFFIX ?= ""
IMAGE_ROOTFS_SIZE = "8192"
IMAGE_ROOTFS_EXTRA_SPACE = "0"

inherit image
