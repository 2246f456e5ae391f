# nbdkit for the vmclient host (distro override "vmclient" only): provd's
# streamed restore serves each disk of a snapshot over NBD from nbdkit's
# Python plugin, running vmclient.provision.nbdplugin
# (python-services/docs/sync.md, "Streamed restore").
#
# The recipe inherits python3native only: configure finds the build host's
# Python, not the target's, and builds no Python plugin.  python3targetconfig
# adds the target's python3 to DEPENDS and makes the native interpreter
# report the target's sysconfig, so the plugin is built against the
# libpython the image carries.
inherit_defer ${@'python3targetconfig' if 'vmclient' in (d.getVar('DISTROOVERRIDES') or '').split(':') else ''}

EXTRA_OECONF:append:vmclient = " --enable-python"

# configure only warns when it cannot embed Python: fail here instead of
# shipping an nbdkit without the plugin.
do_install:append:vmclient() {
    if [ ! -f ${D}${libdir}/nbdkit/plugins/nbdkit-python-plugin.so ]; then
        bbfatal "nbdkit: the Python plugin was not built (see config.log: python-*-embed)"
    fi
}

# The plugin in a package of its own, as distributions ship it
# (Debian's and Fedora's nbdkit-plugin-python): only it pulls Python.
PACKAGES:prepend:vmclient = "${PN}-plugin-python "
FILES:${PN}-plugin-python:append:vmclient = " ${libdir}/nbdkit/plugins/nbdkit-python-plugin.so"
RDEPENDS:${PN}-plugin-python:append:vmclient = " ${PN} python3-core"
