SUMMARY = "Host updates of the vmclient laptop: RAUC's systemd-boot backend"
DESCRIPTION = "The boot side of the A/B host update (PLAN-update.md): \
               RAUC's custom boot loader backend, which keeps one \
               systemd-boot entry per root slot (sort order for the \
               primary slot, boot counting for a slot on trial), the ESP \
               mounted at /efi for it and for systemd-bless-boot, and \
               rauc.service ordered after the data partition it keeps its \
               status on."
SECTION = "base"
LICENSE = "MIT"
# Scripts and units only: no source with a licence file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://10-vmclient.conf \
    file://efi.mount \
    file://rauc-boot-backend \
"

S = "${UNPACKDIR}"

inherit allarch systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd rauc efi"

# The vmclient distro sets them (conf/distro/vmclient.conf).
VMCLIENT_ROOT_SLOTS ??= "a b"
VMCLIENT_BOOT_TRIES ??= "3"
VMCLIENT_DATA_DIR ??= "${localstatedir}/lib/vmclient"

SYSTEMD_SERVICE:${PN} = "efi.mount"

do_install() {
    install -d ${D}${nonarch_libdir}/vmclient
    sed -e 's#@TRIES@#${VMCLIENT_BOOT_TRIES}#' -e 's#@SLOTS@#${VMCLIENT_ROOT_SLOTS}#' \
        ${S}/rauc-boot-backend > ${D}${nonarch_libdir}/vmclient/rauc-boot-backend
    chmod 0755 ${D}${nonarch_libdir}/vmclient/rauc-boot-backend
    install -D -m 0644 ${S}/efi.mount ${D}${systemd_system_unitdir}/efi.mount
    install -d ${D}${systemd_system_unitdir}/rauc.service.d
    sed -e 's#@DATADIR@#${VMCLIENT_DATA_DIR}#' ${S}/10-vmclient.conf \
        > ${D}${systemd_system_unitdir}/rauc.service.d/10-vmclient.conf
    # The ESP's mount point on the read-only root.
    install -d ${D}/efi
}

FILES:${PN} += "\
    /efi \
    ${systemd_system_unitdir}/efi.mount \
    ${nonarch_libdir}/vmclient \
    ${systemd_system_unitdir}/rauc.service.d \
"

# bootctl finds the ESP; systemd-bless-boot (systemd with "efi") marks a
# slot good after boot-complete.target; rauc calls the backend.
RDEPENDS:${PN} = "rauc rauc-conf systemd"
