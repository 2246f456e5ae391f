# Secure Boot (PLAN-encryption.md, section 4), vmclient distro only: with
# the organisation's db key and certificate (VMCLIENT_SB_KEY,
# VMCLIENT_SB_CERT) the firmware must accept the boot loader too, not only
# the unified kernel image uki.bbclass signs.  The copies do_install (the
# root's ESP files) and do_deploy (what wic puts in the ESP) write are
# signed from the unsigned build output, so a task that runs again never
# signs a signed binary.
DEPENDS:append:vmclient = " ${@'sbsigntool-native' if d.getVar('VMCLIENT_SB_KEY') else ''}"

do_install:append:vmclient() {
    if [ -n "${VMCLIENT_SB_KEY}" ]; then
        for efi in ${B}/src/boot/systemd-boot*.efi; do
            sbsign --key "${VMCLIENT_SB_KEY}" --cert "${VMCLIENT_SB_CERT}" \
                --output ${D}${EFI_FILES_PATH}/${SYSTEMD_BOOT_IMAGE} "$efi"
        done
    fi
}

do_deploy:append:vmclient() {
    if [ -n "${VMCLIENT_SB_KEY}" ]; then
        for efi in ${B}/src/boot/systemd-boot*.efi; do
            sbsign --key "${VMCLIENT_SB_KEY}" --cert "${VMCLIENT_SB_CERT}" \
                --output "${DEPLOYDIR}/$(basename "$efi")" "$efi"
        done
    fi
}
