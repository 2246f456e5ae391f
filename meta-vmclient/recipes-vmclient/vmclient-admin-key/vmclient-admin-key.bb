SUMMARY = "Public key of the vmclient administrator"
DESCRIPTION = "Installs the organisation's admin public key (Ed25519, PEM) \
               as /etc/vmclient/admin-key.pub.  The services verify the \
               image catalog and every order to the device (assignment, \
               lease, kill pill) against it.  The key comes from the build \
               variable VMCLIENT_ADMIN_PUBKEY."
SECTION = "base"
LICENSE = "MIT"
# A data-only recipe: no source with a licence file of its own.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

PV = "1.0"

# Absolute path of the admin's public key (PEM, "BEGIN PUBLIC KEY") on the
# build host, e.g. from the environment through kas.yml's env section.
# No default: a product image must never carry a key nobody chose.
VMCLIENT_ADMIN_PUBKEY ??= ""

SRC_URI = "${@'file://' + d.getVar('VMCLIENT_ADMIN_PUBKEY') if d.getVar('VMCLIENT_ADMIN_PUBKEY') else ''}"

S = "${UNPACKDIR}"

inherit allarch

# Without a key the recipe is skipped with a message saying what to set;
# `bitbake vmclient-image` then stops with that message.  Only anonymous
# python can skip a recipe at parse time.
# nooelint: oelint.task.noanonpython
python () {
    key = d.getVar('VMCLIENT_ADMIN_PUBKEY')
    if not key:
        raise bb.parse.SkipRecipe("VMCLIENT_ADMIN_PUBKEY is not set: set it to the absolute path of the "
                                  "admin's Ed25519 public key (PEM) on the build host; see meta-vmclient/README.md, "
                                  "section 'Admin key'")
    if not os.path.isabs(key):
        raise bb.parse.SkipRecipe("VMCLIENT_ADMIN_PUBKEY must be an absolute path, not %r" % key)
}

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    # An absolute file:// path is unpacked under UNPACKDIR with its full path.
    key="${UNPACKDIR}${VMCLIENT_ADMIN_PUBKEY}"
    if ! grep -q -- '-----BEGIN PUBLIC KEY-----' "$key"; then
        bbfatal "VMCLIENT_ADMIN_PUBKEY (${VMCLIENT_ADMIN_PUBKEY}) is not a PEM public key"
    fi
    if grep -q -- 'PRIVATE KEY' "$key"; then
        bbfatal "VMCLIENT_ADMIN_PUBKEY (${VMCLIENT_ADMIN_PUBKEY}) holds a private key: refusing to install it"
    fi
    install -d ${D}${sysconfdir}/vmclient
    install -m 0644 "$key" ${D}${sysconfdir}/vmclient/admin-key.pub
}
