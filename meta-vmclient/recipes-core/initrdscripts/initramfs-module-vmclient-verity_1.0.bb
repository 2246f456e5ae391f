SUMMARY = "initramfs-framework module: the root slot through dm-verity"
DESCRIPTION = "Opens the vmclient root slot named on the kernel command \
               line (roothash=, systemd.verity_root_data=/_hash=/_options=, \
               the parameters systemd-veritysetup-generator reads) through \
               dm-verity before initramfs-framework's rootfs module mounts \
               /dev/mapper/root."
SECTION = "base"
LICENSE = "MIT"
# A shell script of this layer: no source with a licence file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://vmclient-verity"

S = "${UNPACKDIR}"

inherit allarch

# initramfs-framework's init calls NAME_enabled and NAME_run of each
# /init.d/NN-NAME, NAME ending at the next "-": vmclient_verity, not
# vmclient-verity (whose functions it would look for as vmclient_*).
do_install() {
    install -d ${D}/init.d
    install -m 0755 ${S}/vmclient-verity ${D}/init.d/85-vmclient_verity
}

FILES:${PN} += "/init.d/85-vmclient_verity"

# veritysetup (cryptsetup's default PACKAGECONFIG builds it).
RDEPENDS:${PN} = "cryptsetup initramfs-framework-base initramfs-module-rootfs"
