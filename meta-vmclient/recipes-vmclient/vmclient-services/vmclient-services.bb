SUMMARY = "vmclient host services: power manager, provisioning, sync, CLI"
DESCRIPTION = "The Python daemons of the vmclient laptop host (vmclient-powerd, \
               vmclient-provd and vmclient-syncd) and the vmclientctl \
               CLI, with their systemd units, D-Bus policy and activation, \
               polkit actions and rules, logind drop-in, tmpfiles and \
               sysusers entries and default configuration."
SECTION = "devel/python"
LICENSE = "MIT"
# python-services has no LICENSE file of its own: the licence is the
# "license" field of its pyproject.toml.
LIC_FILES_CHKSUM = "file://pyproject.toml;beginline=10;endline=10;md5=29c91c89ee62891477a1476375143bef"

# Keep in step with "version" in python-services/pyproject.toml (tests/layer
# checks it).
PV = "0.1.0"

# Source: the python-services/ directory of this very repository, found
# through FILESEXTRAPATHS (the repository root, three levels above this
# recipe).  The recipe is always in step with the code and bitbake checksums
# every file, so any change rebuilds it; there is no SRCREV to bump.
# The ptest package reproduces the repository's layout for the unit tests:
# tests/unit with tests/conftest.py and tests/testlib.py (which the unit
# tests import), tests/data (test vectors), the shipped VM recipes
# (recipes/) and python-services/data, which unit tests read, and the
# repository's pytest.ini (tests/layer/test_ptest.py runs the result).
# FILESEXTRAPATHS in a recipe is deliberate here (see the comment above).
# nooelint: oelint.vars.fileextrapaths, oelint.vars.outofcontext
FILESEXTRAPATHS:prepend := "${THISDIR}/../../..:"
SRC_URI = "\
    file://python-services \
    file://pytest.ini \
    file://recipes \
    file://run-ptest \
    file://tests/conftest.py \
    file://tests/data \
    file://tests/testlib.py \
    file://tests/unit \
"

S = "${UNPACKDIR}/python-services"

# Only what the repository tracks: file:// copies a directory whole, with
# whatever else lies in the checkout (caches, an editable install's
# egg-info, build output).  In a git checkout, every unpacked file of the
# repository's directories that git does not track is removed; outside one
# (a release tarball) everything is taken.  tests/layer/test_services_recipe.py
# runs this function.
VMCLIENT_REPO_DIRS = "python-services pytest.ini recipes tests"
do_unpack[postfuncs] += "vmclient_only_tracked"
# A post-function of do_unpack, not a task.
# nooelint: oelint.task.docstrings
python vmclient_only_tracked() {
    import subprocess
    top = os.path.normpath(os.path.join(d.getVar("FILE_DIRNAME"), "..", "..", ".."))
    unpacked = d.getVar("UNPACKDIR")
    roots = d.getVar("VMCLIENT_REPO_DIRS").split()
    if not os.path.exists(os.path.join(top, ".git")):
        bb.note("%s is not a git checkout: taking every file of %s" % (top, " ".join(roots)))
        return
    try:
        listed = subprocess.run(["git", "-C", top, "ls-files", "-z", "--cached", "--"] + roots,
                                check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        bb.fatal("cannot list the files git tracks in %s: %s" % (top, getattr(e, "stderr", b"").decode() or e))
    tracked = set(os.fsdecode(p) for p in listed.split(b"\0") if p)
    for root in roots:
        base = os.path.join(unpacked, root)
        if os.path.isfile(base) or os.path.islink(base):
            if root not in tracked:
                os.remove(base)
            continue
        for dirpath, dirnames, filenames in os.walk(base, topdown=False):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if os.path.relpath(path, unpacked) not in tracked:
                    os.remove(path)
            if not os.listdir(dirpath):
                os.rmdir(dirpath)
}

inherit python_setuptools_build_meta systemd useradd ptest-python-pytest features_check

REQUIRED_DISTRO_FEATURES = "systemd"

# The "vmclient" group may call the D-Bus API (bus policy and polkit rule).
# Created at build time because the root filesystem is read-only; the
# sysusers.d entry stays consistent with it (systemd_sysusers_check).
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system vmclient"

SYSTEMD_SERVICE:${PN} = "\
    vmclient-powerd.service \
    vmclient-provd.service \
    vmclient-syncd.service \
    vmclient-recovery-key.service \
    vmclient-recovery-key.path \
    vmclient-boot-check.service \
"

# vmclient-shell, the desktop (python-services/docs/shell.md): its own
# package, so that only an image with a display pulls GTK, spice-gtk and
# their typelibs (gobject-introspection: in each library's main package).
# Weston starts it (weston-init.bbappend).
PACKAGES =+ "vmclient-shell"
FILES:vmclient-shell += "\
    ${bindir}/vmclient-shell \
    ${PYTHON_SITEPACKAGES_DIR}/vmclient/shell \
    ${sysconfdir}/pam.d/vmclient-shell \
"

# A shell helper for do_install, not a task.
# nooelint: oelint.task.docstrings
vmclient_install_dir() {
    src="$1"
    dst="$2"
    mode="$3"
    [ -d "$src" ] || return 0
    for f in "$src"/*; do
        [ -f "$f" ] || continue
        install -d ${D}$dst
        install -m $mode "$f" ${D}$dst/
    done
}

# Every file of each data directory is installed, so a new unit or policy
# file needs no change here except a SYSTEMD_SERVICE entry.
do_install:append() {
    data=${S}/data

    install -d ${D}${systemd_system_unitdir}
    for f in $data/systemd/*; do
        [ -f "$f" ] || continue
        sed -e 's,@BINDIR@,${bindir},g' "$f" > ${D}${systemd_system_unitdir}/$(basename "$f")
        chmod 0644 ${D}${systemd_system_unitdir}/$(basename "$f")
    done

    vmclient_install_dir $data/dbus-1/system.d ${datadir}/dbus-1/system.d 0644
    vmclient_install_dir $data/dbus-1/system-services ${datadir}/dbus-1/system-services 0644
    # The interfaces' introspection XML: package data the daemons read their method
    # signatures from, and the introspection files of /usr/share/dbus-1/interfaces.
    install -d ${D}${datadir}/dbus-1/interfaces
    install -m 0644 ${S}/src/vmclient/dbus/xml/org.vmclient.VMClient1.*.xml \
        ${D}${datadir}/dbus-1/interfaces/
    vmclient_install_dir $data/polkit-1/actions ${datadir}/polkit-1/actions 0644
    vmclient_install_dir $data/polkit-1/rules.d ${datadir}/polkit-1/rules.d 0644
    vmclient_install_dir $data/logind.conf.d ${systemd_unitdir}/logind.conf.d 0644
    vmclient_install_dir $data/tmpfiles.d ${nonarch_libdir}/tmpfiles.d 0644
    vmclient_install_dir $data/sysusers.d ${nonarch_libdir}/sysusers.d 0644
    # The lock screen's PAM service (pam_unix through its setuid unix_chkpwd).
    vmclient_install_dir $data/pam.d ${sysconfdir}/pam.d 0644

    # Manual pages made from the CLIs' parsers (vmclient.manpage) and argcomplete's
    # bash hook for vmclientctl and vmclient-admin.
    vmclient_install_dir $data/man/man1 ${mandir}/man1 0644
    vmclient_install_dir $data/bash-completion ${datadir}/bash-completion/completions 0644

    # Default configuration, one TOML file per daemon.
    install -d ${D}${sysconfdir}/vmclient
    for f in $data/vmclient/*.toml; do
        [ -f "$f" ] || continue
        install -m 0644 "$f" ${D}${sysconfdir}/vmclient/
    done
}

# ptest: the repository's pure unit tests, in the repository's layout (the
# tests find their data relative to their own files).  The services
# themselves are imported from the installed package.
do_install_ptest() {
    install -d ${D}${PTEST_PATH}/tests/unit ${D}${PTEST_PATH}/tests/data \
        ${D}${PTEST_PATH}/recipes ${D}${PTEST_PATH}/python-services/data
    cp -R --no-dereference --preserve=mode,links ${UNPACKDIR}/tests/unit/. ${D}${PTEST_PATH}/tests/unit/
    cp -R --no-dereference --preserve=mode,links ${UNPACKDIR}/tests/data/. ${D}${PTEST_PATH}/tests/data/
    cp -R --no-dereference --preserve=mode,links ${UNPACKDIR}/recipes/. ${D}${PTEST_PATH}/recipes/
    cp -R --no-dereference --preserve=mode,links ${S}/data/. ${D}${PTEST_PATH}/python-services/data/
    install -m 0644 ${UNPACKDIR}/tests/conftest.py ${UNPACKDIR}/tests/testlib.py ${D}${PTEST_PATH}/tests/
    find ${D}${PTEST_PATH} -name __pycache__ -type d -prune -exec rm -rf {} +
    install -m 0644 ${UNPACKDIR}/pytest.ini ${D}${PTEST_PATH}/
    install -m 0755 ${UNPACKDIR}/run-ptest ${D}${PTEST_PATH}/
}

FILES:${PN} += "\
    ${datadir}/dbus-1 \
    ${datadir}/polkit-1 \
    ${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
    ${systemd_unitdir}/logind.conf.d \
"

# The bash hooks go to ${PN}-bash-completion (oe-core's class); they run the
# CLIs under argcomplete.
inherit bash-completion
# The class adds that package to PACKAGES, which oelint does not see.
# nooelint: oelint.vars.pkgspecific.RDEPENDS, oelint.vars.specific
RDEPENDS:${PN}-bash-completion += "python3-argcomplete"

# Runtime dependencies of python-services (pyproject.toml "dependencies",
# under their Yocto names; tests/layer checks the mapping), the split
# standard-library packages the code imports, and the daemons it talks to
# or runs: nbdkit with its Python plugin serves a streamed restore's disks
# (provd runs it with vmclient.provision.nbdplugin; the plugin package is
# built by this layer's nbdkit_%.bbappend).
RDEPENDS:${PN} += "\
    dbus \
    libvirt-libvirtd \
    libvirt-python \
    nbdkit \
    nbdkit-plugin-python \
    openssh-ssh \
    python3-asyncio \
    python3-boto3 \
    python3-core \
    python3-cryptography \
    python3-dbus-fast \
    python3-evdev \
    python3-json \
    python3-logging \
    python3-pyudev \
    python3-rich \
    python3-tomllib \
    python3-zstandard \
    qemu \
"

RDEPENDS:${PN}-ptest += "\
    python3-dbusmock \
    python3-hypothesis \
    python3-pytest-asyncio \
    python3-pytest-timeout \
"

# What the shell loads: GObject typelibs (tests/layer/test_services_recipe.py
# maps each namespace the shell requires to its package), a font, and the
# lock screen's PAM binding (meta-python's pamela) and pam_unix.
RDEPENDS:vmclient-shell = "\
    ${PN} \
    gdk-pixbuf \
    gtk+3 \
    pam-plugin-unix \
    pamela \
    pango \
    python3-pygobject \
    spice-gtk \
    ttf-bitstream-vera \
"
