SUMMARY = "Host update bundle of the vmclient laptop (RAUC, verity format)"
DESCRIPTION = "A signed RAUC bundle of vmclient-image for the A/B root \
               slots: the root with its dm-verity hash tree, and the \
               signed UKI of each slot (its command line holds the root \
               hash), which the bundle's hook puts on the ESP.  \
               PLAN-update.md describes the whole update."
SECTION = "images"
LICENSE = "MIT"

inherit bundle

# The bundle's signing key and certificate, absolute paths on the build host
# (VMCLIENT_RAUC_KEY, VMCLIENT_RAUC_CERT: from the environment through
# kas.yml); the certificate must chain to the keyring the image trusts
# (VMCLIENT_RAUC_KEYRING).  bundle.bbclass's variables, which oelint-adv
# does not know.
# nooelint: oelint.vars.mispell.unknown
RAUC_KEY_FILE = "${VMCLIENT_RAUC_KEY}"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_CERT_FILE = "${VMCLIENT_RAUC_CERT}"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_FORMAT = "verity"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_COMPATIBLE = "${VMCLIENT_RAUC_COMPATIBLE}"
# An uncompressed squashfs, as the bundles the datacenter's repository holds
# must be (python-services/docs/repository-format.md, "Host update bundles"):
# a compressed one shifts every byte after a changed file, and the next
# release would share almost no chunk with this one.  The repository
# compresses each chunk itself.  No time stamp, owners root: the same
# files give the same bytes.
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
BUNDLE_ARGS += "--mksquashfs-args='-noI -noD -noF -noX -all-root -mkfs-time 0'"
# The image's version: system.conf refuses a bundle older than the running
# image (min-bundle-version) unless IT orders the downgrade.
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"

# The root slot: the ext4 root with its hash tree (image_types_verity),
# written as it is (raw).
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_SLOTS = "rootfs"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_SLOT_rootfs = "vmclient-image"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_SLOT_rootfs[fstype] = "ext4.verity"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_SLOT_rootfs[imagetype] = "raw"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_SLOT_rootfs[hooks] = "post-install"

# The hook that puts the slot's UKI on the ESP, and the UKIs of both slots
# (vmclient-ab-uki.bbclass writes them to DEPLOY_DIR_IMAGE).
SRC_URI = "file://vmclient-bundle-hook"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_HOOKS[file] = "vmclient-bundle-hook"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_EXTRA_DEPENDS = "vmclient-image:do_image_complete"
# (bundle.bbclass)
# nooelint: oelint.vars.mispell.unknown
RAUC_BUNDLE_EXTRA_FILES = "${@' '.join('vmclient-%s.efi' % s for s in d.getVar('VMCLIENT_ROOT_SLOTS').split())}"

# Without the signing key the recipe is skipped, saying what to set.
# nooelint: oelint.task.noanonpython
python () {
    for var in ('VMCLIENT_RAUC_KEY', 'VMCLIENT_RAUC_CERT'):
        path = d.getVar(var)
        if not path:
            raise bb.parse.SkipRecipe("%s is not set: bundles are signed with the update key and "
                                      "certificate (absolute paths on the build host); see "
                                      "meta-vmclient/PLAN-update.md, section 'Keys'" % var)
        if not os.path.isabs(path):
            raise bb.parse.SkipRecipe("%s must be an absolute path, not %r" % (var, path))
}
