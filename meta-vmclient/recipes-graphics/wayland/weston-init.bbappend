# Weston on the vmclient host (distro override "vmclient" only): the kiosk
# shell, showing one application full screen, vmclient-shell, the host's
# only user interface.  weston-init's weston.service runs Weston on the
# seat (tty7, a logind session through PAM) as the unprivileged user
# WESTON_USER ("weston": groups video, input, render, seat, wayland; no
# root in the UI); polkit lets the seat's active session open the VMs'
# displays (vmclient-services).

FILESEXTRAPATHS:prepend:vmclient := "${THISDIR}/weston-init:"

SRC_URI:append:vmclient = " file://50-vmclient.conf file://vmclient-home.conf"

do_install:append:vmclient() {
    sed -i -e 's,@bindir@,${bindir},g' ${D}${sysconfdir}/xdg/weston/weston.ini
    if ${@bb.utils.contains('DISTRO_FEATURES', 'systemd', 'true', 'false', d)}; then
        sed -e 's,@WESTON_USER_HOME@,${WESTON_USER_HOME},g' -e 's,@bindir@,${bindir},g' \
            -e 's,@sysconfdir@,${sysconfdir},g' ${UNPACKDIR}/50-vmclient.conf > ${UNPACKDIR}/50-vmclient.conf.out
        install -D -m 0644 ${UNPACKDIR}/50-vmclient.conf.out ${D}${systemd_system_unitdir}/weston.service.d/50-vmclient.conf
    fi
    # The seat user's home on the data partition (vmclient-persist binds
    # /home from it): systemd-tmpfiles makes it with its owner.
    sed -e 's,@WESTON_USER_HOME@,${WESTON_USER_HOME},g' -e 's,@WESTON_USER@,${WESTON_USER},g' \
        ${UNPACKDIR}/vmclient-home.conf > ${UNPACKDIR}/vmclient-home.conf.out
    install -D -m 0644 ${UNPACKDIR}/vmclient-home.conf.out ${D}${nonarch_libdir}/tmpfiles.d/vmclient-weston-home.conf
}

FILES:${PN}:append:vmclient = " ${systemd_system_unitdir}/weston.service.d ${nonarch_libdir}/tmpfiles.d"

# The shell Weston starts ([autolaunch] in weston.ini).
RDEPENDS:${PN}:append:vmclient = " vmclient-shell"

# The seat's user is the laptop's person: the shell it runs calls the D-Bus
# API (pause, resume, sync now, what IT assigned), which the bus policy and
# polkit give the group "vmclient" (vmclient-services creates it too; the
# useradd class skips a group that exists).  The lock screen checks this
# user's password through PAM (python-services/docs/shell.md).
GROUPADD_PARAM:${PN}:append:vmclient = " ; --system vmclient"
GROUPMEMS_PARAM:${PN}:append:vmclient = " -a ${WESTON_USER} -g vmclient"
