SUMMARY = "Persistent state of the vmclient host on its data partition"
DESCRIPTION = "Creates the data partition on first boot (systemd-repart: \
               LUKS2, its key sealed to the TPM2), unlocks it (crypttab) \
               and mounts it, binds the directories that must survive a \
               reboot (libvirt's definitions in /etc/libvirt, its state and \
               VM disks in /var/lib/libvirt, the journal) from it over the \
               read-only root and the volatile /var, keeps the machine ID \
               and a size-capped persistent journal on it, asks for the \
               recovery key when the TPM2 does not unlock it, and keeps \
               libvirt, the vmclient services and the desktop from starting \
               without it."
SECTION = "base"
LICENSE = "MIT"
# Configuration files only: no source with a licence file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://50-vmclient-journal.conf \
    file://50-vmdata.conf \
    file://crypttab \
    file://systemd-cryptsetup-vmdata.conf.in \
    file://vmclient-data-recovery \
    file://vmclient-data-user.conf \
    file://vmclient-data.mount.in \
    file://vmclient-data.target.in \
    file://vmclient-machine-id.service.in \
    file://vmclient-persist.service.in \
    file://vmclient-recovery-key-used.service.in \
"

S = "${UNPACKDIR}"

inherit allarch systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# "<directory on the data partition> <mount point>" per line; the vmclient
# distro sets it (conf/distro/vmclient.conf).
VMCLIENT_DATA_DIR ??= "${localstatedir}/lib/vmclient"
VMCLIENT_PERSISTENT_BINDS ??= ""
# The units that need the data partition: each gets a drop-in requiring
# vmclient-data.target (the vmclient distro sets it).
VMCLIENT_DATA_USERS ??= ""

def vmclient_persist_units(d):
    units = []
    for line in d.getVar("VMCLIENT_PERSISTENT_BINDS").replace("\\n", "\n").splitlines():
        if line.split():
            _what, where = line.split()
            units.append("vmclient-persist-%s.service" % where.strip("/").replace("/", "-"))
    return " ".join(units)

# The data partition's mount unit, named after its mount point as systemd
# requires (systemd-escape --path; a path that needs \x escapes is refused).
def vmclient_data_mount(d):
    import re
    path = d.getVar("VMCLIENT_DATA_DIR").strip("/")
    if not re.fullmatch(r"[A-Za-z0-9_.:]+(/[A-Za-z0-9_.:]+)*", path):
        bb.fatal("VMCLIENT_DATA_DIR (%s): only letters, digits, '_', '.' and ':' in its components" % path)
    return path.replace("/", "-") + ".mount"

VMCLIENT_DATA_MOUNT = "${@vmclient_data_mount(d)}"

SYSTEMD_SERVICE:${PN} = "${VMCLIENT_DATA_MOUNT} ${@vmclient_persist_units(d)} vmclient-machine-id.service"
# Started by what requires them, not enabled.
VMCLIENT_DATA_STATIC = "vmclient-data.target vmclient-recovery-key-used.service"

do_compile() {
    sed -e "s#@datadir@#${VMCLIENT_DATA_DIR}#g" ${S}/vmclient-data.mount.in > "${B}/${VMCLIENT_DATA_MOUNT}"
    for unit in vmclient-machine-id.service vmclient-recovery-key-used.service systemd-cryptsetup-vmdata.conf; do
        sed -e "s#@datadir@#${VMCLIENT_DATA_DIR}#g" -e "s#@base_sbindir@#${base_sbindir}#g" \
            -e "s#@sbindir@#${sbindir}#g" -e "s#@libexecdir@#${libexecdir}#g" \
            ${S}/$unit.in > "${B}/$unit"
    done
    sed -e "s#@units@#${VMCLIENT_DATA_MOUNT} ${@vmclient_persist_units(d)} vmclient-machine-id.service#g" \
        ${S}/vmclient-data.target.in > "${B}/vmclient-data.target"
    while read what where; do
        [ -n "$what" ] || continue
        unit="vmclient-persist-$(echo "${where#/}" | tr / -).service"
        sed -e "s#@what@#$what#g" -e "s#@where@#$where#g" \
            -e "s#@datadir@#${VMCLIENT_DATA_DIR}#g" -e "s#@base_sbindir@#${base_sbindir}#g" \
            ${S}/vmclient-persist.service.in > "${B}/$unit"
    done <<END
${@d.getVar('VMCLIENT_PERSISTENT_BINDS').replace("\\n", "\n")}
END
}

do_install() {
    install -d ${D}${systemd_system_unitdir}
    for unit in ${SYSTEMD_SERVICE:${PN}} ${VMCLIENT_DATA_STATIC}; do
        install -m 0644 ${B}/$unit ${D}${systemd_system_unitdir}/
    done
    for unit in ${VMCLIENT_DATA_USERS}; do
        install -D -m 0644 ${S}/vmclient-data-user.conf ${D}${systemd_system_unitdir}/$unit.d/50-vmclient-data.conf
    done
    install -D -m 0755 ${S}/vmclient-data-recovery ${D}${libexecdir}/vmclient-data-recovery
    install -D -m 0644 ${B}/systemd-cryptsetup-vmdata.conf ${D}${systemd_system_unitdir}/systemd-cryptsetup@vmdata.service.d/50-vmclient-recovery.conf
    install -D -m 0644 ${S}/50-vmdata.conf ${D}${nonarch_libdir}/repart.d/50-vmdata.conf
    install -D -m 0644 ${S}/crypttab ${D}${sysconfdir}/crypttab
    install -D -m 0644 ${S}/50-vmclient-journal.conf ${D}${systemd_unitdir}/journald.conf.d/50-vmclient.conf
}

FILES:${PN} += "\
    ${sysconfdir}/crypttab \
    ${libexecdir}/vmclient-data-recovery \
    ${systemd_system_unitdir} \
    ${nonarch_libdir}/repart.d \
    ${systemd_unitdir}/journald.conf.d \
"

CONFFILES:${PN} = "${sysconfdir}/crypttab"

# mount-copybind comes with volatile-binds; systemd-repart and
# systemd-cryptsetup with systemd (PACKAGECONFIG "repart cryptsetup tpm2" in
# the vmclient distro), systemd-cryptenroll (the recovery key) and the
# TPM2 token plugin with systemd-crypt (only recommended by systemd).
# cryptsetup (the recovery key's prompt opens the partition with it).
RDEPENDS:${PN} = "cryptsetup systemd-crypt volatile-binds"
