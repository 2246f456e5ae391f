# The vmclient host's RAUC configuration (vmclient distro only): our
# system.conf (two root slots, systemd-boot through a custom backend,
# verity bundles only) and the organisation's update CA as the keyring,
# from VMCLIENT_RAUC_KEYRING (an absolute path on the build host, from the
# environment through kas.yml).  No default keyring: without one the
# recipe is skipped and the image, which needs it, is refused.
FILESEXTRAPATHS:prepend:vmclient := "${THISDIR}/files:"

RAUC_KEYRING_FILE:vmclient = "${VMCLIENT_RAUC_KEYRING}"
# (rauc-conf.bb)
# nooelint: oelint.vars.mispell.unknown
RAUC_KEYRING_URI:vmclient = "file://${VMCLIENT_RAUC_KEYRING}"

# system.conf names the machine (compatible).
PACKAGE_ARCH:vmclient = "${MACHINE_ARCH}"

# Only anonymous python can skip a recipe at parse time; it acts for the
# vmclient distro only (its first line), which oelint-adv cannot see.
# nooelint: oelint.task.noanonpython oelint.vars.noncoreoverride
python () {
    if d.getVar('DISTRO') != 'vmclient':
        return
    keyring = d.getVar('VMCLIENT_RAUC_KEYRING')
    if not keyring:
        raise bb.parse.SkipRecipe("VMCLIENT_RAUC_KEYRING is not set: set it to the absolute path of the "
                                  "update CA certificate (PEM) the image trusts for host update bundles; "
                                  "see meta-vmclient/PLAN-update.md, section 'Keys'")
    if not os.path.isabs(keyring):
        raise bb.parse.SkipRecipe("VMCLIENT_RAUC_KEYRING must be an absolute path, not %r" % keyring)
}

do_install:append:vmclient() {
    if ! grep -q -- '-----BEGIN CERTIFICATE-----' "${UNPACKDIR}/${RAUC_KEYRING_FILE}"; then
        bbfatal "VMCLIENT_RAUC_KEYRING (${VMCLIENT_RAUC_KEYRING}) holds no PEM certificate"
    fi
    if grep -q -- 'PRIVATE KEY' "${UNPACKDIR}/${RAUC_KEYRING_FILE}"; then
        bbfatal "VMCLIENT_RAUC_KEYRING (${VMCLIENT_RAUC_KEYRING}) holds a private key: refusing to install it"
    fi
    sed -i -e 's#@COMPATIBLE@#${VMCLIENT_RAUC_COMPATIBLE}#' \
        -e 's#@VERSION@#${DISTRO_VERSION}#' \
        -e 's#@DATADIR@#${VMCLIENT_DATA_DIR}#' \
        -e 's#@KEYRING@#${nonarch_libdir}/rauc/${@os.path.basename(d.getVar("VMCLIENT_RAUC_KEYRING"))}#' \
        -e 's#@BACKEND@#${nonarch_libdir}/vmclient/rauc-boot-backend#' \
        -e 's#@TRIES@#${VMCLIENT_BOOT_TRIES}#' \
        ${D}${nonarch_libdir}/rauc/system.conf
}
