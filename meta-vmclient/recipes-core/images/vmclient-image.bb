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

# The data partition is created on first boot in the free space after the
# root (systemd-repart, vmclient-persist).  A laptop's disk has it; the
# disk runqemu boots is the .wic file itself, so the qemu machines' image
# gets free space at its end (sgdisk -e moves the backup GPT there).
VMCLIENT_QEMU_DATA_SPACE ?= "8G"
IMAGE_CMD:wic:append:qemuall() {
    truncate -s +${VMCLIENT_QEMU_DATA_SPACE} "$out.wic"
    sgdisk -e "$out.wic"
}

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

# Secure Boot (PLAN-encryption.md, section 4): with the organisation's db
# key and certificate (VMCLIENT_SB_KEY, VMCLIENT_SB_CERT: absolute paths on
# the build host, from the environment through kas.yml), the ESP holds a
# unified kernel image (kernel, initramfs and this command line in one
# signed EFI binary) that systemd-boot finds in EFI/Linux; the command line
# cannot be changed at the boot menu.  Without them the image boots the
# kernel and the boot loader entry wic writes (lab and runqemu builds).
# (VMCLIENT_SB_KEY and VMCLIENT_SB_CERT default to "" in the distro.)
inherit_defer ${@'uki' if d.getVar('VMCLIENT_SB_KEY') else ''}
# ukify signs with sbsign (recipes-devtools/sbsigntool: no pinned layer
# builds it); systemd-boot's bbappend signs the boot loader with the same key.
DEPENDS += "${@'sbsigntool-native' if d.getVar('VMCLIENT_SB_KEY') else ''}"
# uki.bbclass's variables, which oelint-adv does not know.
# nooelint: oelint.vars.mispell.unknown
UKI_CMDLINE = "rootwait root=LABEL=vmroot rootfstype=ext4 ro ${VMCLIENT_KERNEL_CONSOLE}"
# (uki.bbclass)
# nooelint: oelint.vars.mispell.unknown
UKI_SB_KEY = "${VMCLIENT_SB_KEY}"
# (uki.bbclass)
# nooelint: oelint.vars.mispell.unknown
UKI_SB_CERT = "${VMCLIENT_SB_CERT}"

inherit features_check
REQUIRED_DISTRO_FEATURES = "kvm systemd virtualization"

inherit core-image
