SUMMARY = "Persistent state of the vmclient host on its data partition"
DESCRIPTION = "Creates the data partition on first boot (systemd-repart: \
               LUKS2, its key sealed to the TPM2), unlocks it (crypttab) \
               and mounts it, binds the directories that must survive a \
               reboot (libvirt's definitions in /etc/libvirt, its state and \
               VM disks in /var/lib/libvirt, the journal) from it over the \
               read-only root and the volatile /var, and keeps a size-capped \
               persistent journal."
SECTION = "base"
LICENSE = "MIT"
# Configuration files only: no source with a licence file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://50-vmclient-journal.conf \
    file://50-vmdata.conf \
    file://crypttab \
    file://vmclient-data.mount.in \
    file://vmclient-persist.service.in \
"

S = "${UNPACKDIR}"

inherit allarch systemd features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# "<directory on the data partition> <mount point>" per line; the vmclient
# distro sets it (conf/distro/vmclient.conf).
VMCLIENT_DATA_DIR ??= "${localstatedir}/lib/vmclient"
VMCLIENT_PERSISTENT_BINDS ??= ""

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

SYSTEMD_SERVICE:${PN} = "${VMCLIENT_DATA_MOUNT} ${@vmclient_persist_units(d)}"

do_compile() {
    sed -e "s#@datadir@#${VMCLIENT_DATA_DIR}#g" ${S}/vmclient-data.mount.in > "${B}/${VMCLIENT_DATA_MOUNT}"
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
    for unit in ${SYSTEMD_SERVICE:${PN}}; do
        install -m 0644 ${B}/$unit ${D}${systemd_system_unitdir}/
    done
    install -D -m 0644 ${S}/50-vmdata.conf ${D}${nonarch_libdir}/repart.d/50-vmdata.conf
    install -D -m 0644 ${S}/crypttab ${D}${sysconfdir}/crypttab
    install -D -m 0644 ${S}/50-vmclient-journal.conf ${D}${systemd_unitdir}/journald.conf.d/50-vmclient.conf
}

FILES:${PN} += "\
    ${sysconfdir}/crypttab \
    ${nonarch_libdir}/repart.d \
    ${systemd_unitdir}/journald.conf.d \
"

CONFFILES:${PN} = "${sysconfdir}/crypttab"

# mount-copybind comes with volatile-binds; systemd-repart and
# systemd-cryptsetup with systemd (PACKAGECONFIG "repart cryptsetup tpm2" in
# the vmclient distro), systemd-cryptenroll (the recovery key) and the
# TPM2 token plugin with systemd-crypt (only recommended by systemd).
RDEPENDS:${PN} = "systemd-crypt volatile-binds"
