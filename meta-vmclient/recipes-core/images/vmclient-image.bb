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

# An EFI disk image with the ESP and the two root slots (the data
# partition is made on the laptop), plus a bmap for bmaptool.  "=", not "?=": both machines set WKS_FILE with "?=" in their
# configuration, which is parsed first and would win (genericx86.wks.in,
# qemux86-directdisk.wks).  scripts/check-layer asserts WKS_FULL_PATH.
WKS_FILE = "vmclient-efi.wks.in"
IMAGE_FSTYPES:append = " wic.zst wic.bmap"

# The data partition is created on first boot in the free space after the
# root slots (systemd-repart, vmclient-persist).  A laptop's disk has it; the
# disk runqemu boots is the .wic file itself, so the qemu machines' image
# gets free space at its end (sgdisk -e moves the backup GPT there).
VMCLIENT_QEMU_DATA_SPACE ?= "8G"
IMAGE_CMD:wic:append:qemuall() {
    truncate -s +${VMCLIENT_QEMU_DATA_SPACE} "$out.wic"
    sgdisk -e "$out.wic"
}

# runqemu boots the disk through OVMF and systemd-boot, never a kernel of
# its own (it would bypass the UKI, its root hash and the slots).
QB_DEFAULT_KERNEL:qemuall = "none"
# (qemuboot.bbclass)
# nooelint: oelint.vars.mispell.unknown
QB_KERNEL_ROOT:qemuall = ""

# runqemu: a TPM2 for the data partition's key (systemd-repart
# Encrypt=tpm2, crypttab tpm2-device=auto), as every current laptop has:
# swtpm on the build host (Debian: swtpm) with its state in TMPDIR, on
# QEMU's CRB interface (Intel PTT and AMD fTPM are CRB too).
VMCLIENT_SWTPM_DIR ?= "${TMPDIR}/vmclient-swtpm"
# runqemu's setup command (qemuboot.bbclass passes every QB_ variable).
# nooelint: oelint.vars.mispell.unknown
QB_SETUP_CMD:qemuall = "mkdir -p ${VMCLIENT_SWTPM_DIR} && swtpm socket --tpm2 --daemon --tpmstate dir=${VMCLIENT_SWTPM_DIR} --ctrl type=unixio,path=${VMCLIENT_SWTPM_DIR}/sock,terminate --flags startup-clear"
QB_OPT_APPEND:append:qemuall = " -chardev socket,id=chrtpm,path=${VMCLIENT_SWTPM_DIR}/sock -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0"

# The desktop: Weston (weston-init's weston.service, graphical.target) runs
# vmclient-shell on the seat.
SYSTEMD_DEFAULT_TARGET = "graphical.target"

# The boot chain (PLAN-update.md, PLAN-encryption.md section 4): systemd-boot
# boots a unified kernel image per root slot (kernel, the vmclient initramfs
# and a command line in one EFI binary, uki.bbclass), whose command line
# opens the slot's root through dm-verity with the root hash of this very
# root (image_types_verity, vmclient-ab-uki.bbclass).  With the
# organisation's db key and certificate (VMCLIENT_SB_KEY, VMCLIENT_SB_CERT:
# absolute paths on the build host, from the environment through kas.yml)
# the UKIs are signed, and so the root hash with them: a modified root does
# not boot.  Without them the UKIs are unsigned (lab and runqemu builds).
# (VMCLIENT_SB_KEY and VMCLIENT_SB_CERT default to "" in the distro.)
IMAGE_CLASSES += "image_types_verity uki vmclient-ab-uki"
IMAGE_FSTYPES:append = " ext4 verity"
# The salt of this image's hash trees (image_types_verity: one per image).
# (image_types_verity.bbclass, meta-oe)
# nooelint: oelint.vars.mispell.unknown
VERITY_SALT = "8c13bae0214306e2663887fb9d6f6a4833cbd8c6ea6ebf8132a7ab2acdbcabaa"
# The initramfs that opens the verified root (recipes-core/images).
INITRAMFS_IMAGE = "vmclient-initramfs"
# ukify signs with sbsign (recipes-devtools/sbsigntool: no pinned layer
# builds it); systemd-boot's bbappend signs the boot loader with the same key.
DEPENDS += "${@'sbsigntool-native' if d.getVar('VMCLIENT_SB_KEY') else ''}"
# What every slot's command line shares (vmclient-ab-uki.bbclass adds the
# slot's root, its dm-verity parameters and rauc.slot=); the root is
# read-only anyway (dm-verity); a failure in the initramfs restarts the
# laptop, so that boot counting falls back to the other slot.
# uki.bbclass's variables, which oelint-adv does not know.
# nooelint: oelint.vars.mispell.unknown
UKI_CMDLINE = "rootwait rootfstype=ext4 ro init_fatal_reboot ${VMCLIENT_KERNEL_CONSOLE}"
# (uki.bbclass)
# nooelint: oelint.vars.mispell.unknown
UKI_SB_KEY = "${VMCLIENT_SB_KEY}"
# (uki.bbclass)
# nooelint: oelint.vars.mispell.unknown
UKI_SB_CERT = "${VMCLIENT_SB_CERT}"

# systemd-bless-boot marks a slot good after boot-complete.target
# (vmclient-boot-check.service gates it); meta-rauc's rauc-mark-good would
# do it a second time.
BAD_RECOMMENDATIONS += "rauc-mark-good"

inherit features_check
REQUIRED_DISTRO_FEATURES = "kvm systemd virtualization"

inherit core-image
