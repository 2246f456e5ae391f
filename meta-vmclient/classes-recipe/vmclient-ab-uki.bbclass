# vmclient-ab-uki: a verified root in two slots, booted by one UKI per slot
# (PLAN-update.md).  For vmclient-image, with uki and image_types_verity
# (meta-oe) in IMAGE_CLASSES and "verity" in IMAGE_FSTYPES:
#
#  - image_types_verity appends the dm-verity hash tree to the ext4 root
#    (.ext4.verity, no superblock) and writes its parameters, the root hash
#    among them (.ext4.verity-params);
#  - do_uki runs after it and builds, with uki.bbclass's own task, one UKI
#    per root slot (VMCLIENT_ROOT_SLOTS): vmclient-<slot>.efi, whose command
#    line opens that slot's partition (GPT name vmroot_<slot>) through
#    dm-verity with exactly this root hash, as systemd-veritysetup-generator
#    reads it (roothash=, systemd.verity_root_data=/_hash=/_options=) and
#    the initramfs's vmclient-verity module does, and names the slot for
#    RAUC (rauc.slot=).  Signed when UKI_SB_KEY/UKI_SB_CERT are set: the
#    root hash is then part of what Secure Boot verifies;
#  - the first slot's boot loader entry (vmclient-<slot>.conf), the one the
#    factory image boots; RAUC's boot backend writes the others.
#
# The UKIs and the entry go to DEPLOY_DIR_IMAGE, where uki.bbclass puts its
# UKI and wic's bootimg_efi and the bundle take them from.

VMCLIENT_ROOT_SLOTS ??= "a b"
VMCLIENT_ROOT_PARTLABEL_PREFIX ??= "vmroot_"
# Where the UKIs live on the ESP: not EFI/Linux, or systemd-boot would list
# each UKI a second time, without the slot's entry and its boot counter.
VMCLIENT_UKI_DIR ??= "EFI/vmclient"

UKI_FILENAME = "vmclient-${@d.getVar('VMCLIENT_ROOT_SLOTS').split()[0]}.efi"

def vmclient_verity_params(text):
    """The KEY=value lines image_types_verity writes (.verity-params)."""
    params = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            params[key.strip()] = value.strip()
    return params

def vmclient_slot_cmdline(slot, params, base, partlabel_prefix="vmroot_"):
    """The kernel command line of root slot ``slot``: its partition opened
    through dm-verity as image_types_verity formatted it (hash tree after
    the data, no superblock) with the root hash in ``params``, restarting
    on a corrupted block."""
    need = ("VERITY_ROOT_HASH", "VERITY_DATA_BLOCKS", "VERITY_DATA_BLOCK_SIZE",
            "VERITY_HASH_BLOCK_SIZE", "VERITY_HASH_ALGORITHM", "VERITY_SALT", "VERITY_DATA_SECTORS")
    missing = [k for k in need if not params.get(k)]
    if missing:
        raise ValueError("dm-verity parameters without %s" % ", ".join(missing))
    device = "PARTLABEL=%s%s" % (partlabel_prefix, slot)
    options = ",".join([
        "superblock=false",
        "data-blocks=%s" % params["VERITY_DATA_BLOCKS"],
        "data-block-size=%s" % params["VERITY_DATA_BLOCK_SIZE"],
        "hash-block-size=%s" % params["VERITY_HASH_BLOCK_SIZE"],
        "hash-offset=%d" % (int(params["VERITY_DATA_SECTORS"]) * 512),
        "hash=%s" % params["VERITY_HASH_ALGORITHM"],
        "salt=%s" % params["VERITY_SALT"],
        # a modified block of the root restarts the laptop when it is read
        # (dm-verity alone only fails the read and the boot may go on), and
        # boot counting falls back to the other slot
        "restart-on-corruption",
    ])
    return " ".join([
        "roothash=%s" % params["VERITY_ROOT_HASH"],
        "systemd.verity_root_data=%s" % device,
        "systemd.verity_root_hash=%s" % device,
        "systemd.verity_root_options=%s" % options,
        "root=/dev/mapper/root",
        "rauc.slot=%s" % slot,
    ] + base.split())

def vmclient_boot_entry(slot, sort_key, uki_dir="EFI/vmclient"):
    """A slot's boot loader entry, the text RAUC's boot backend writes too
    (recipes-core/vmclient-update/files/rauc-boot-backend, entry_text)."""
    return "title vmclient (slot %s)\nsort-key %s\nuki /%s/vmclient-%s.efi\n" % (
        slot.upper(), sort_key, uki_dir, slot)

def vmclient_read_verity_params(d):
    path = d.expand("${IMGDEPLOYDIR}/${IMAGE_LINK_NAME}.${VERITY_IMAGE_FSTYPE}.verity-params")
    try:
        with open(path) as f:
            return vmclient_verity_params(f.read())
    except OSError as e:
        bb.fatal("vmclient-ab-uki: cannot read the root's dm-verity parameters (%s): %s" % (path, e))

# do_uki's prefunc: the first slot's command line (UKI_CMDLINE is the part
# every slot shares).
python vmclient_uki_first_slot() {
    params = vmclient_read_verity_params(d)
    slot = d.getVar('VMCLIENT_ROOT_SLOTS').split()[0]
    base = d.getVar('UKI_CMDLINE') or ""
    d.setVar('VMCLIENT_UKI_BASE_CMDLINE', base)
    d.setVar('UKI_FILENAME', 'vmclient-%s.efi' % slot)
    d.setVar('UKI_CMDLINE', vmclient_slot_cmdline(slot, params, base, d.getVar('VMCLIENT_ROOT_PARTLABEL_PREFIX')))
    bb.note("vmclient-ab-uki: slot %s: %s" % (slot, d.getVar('UKI_CMDLINE')))
}

# do_uki's postfunc: uki.bbclass's do_uki again for each other slot, and
# the first slot's boot loader entry.
python vmclient_uki_other_slots() {
    params = vmclient_read_verity_params(d)
    slots = d.getVar('VMCLIENT_ROOT_SLOTS').split()
    base = d.getVar('VMCLIENT_UKI_BASE_CMDLINE')
    for slot in slots[1:]:
        localdata = bb.data.createCopy(d)
        localdata.setVar('UKI_FILENAME', 'vmclient-%s.efi' % slot)
        localdata.setVar('UKI_CMDLINE', vmclient_slot_cmdline(slot, params, base, d.getVar('VMCLIENT_ROOT_PARTLABEL_PREFIX')))
        bb.note("vmclient-ab-uki: slot %s: %s" % (slot, localdata.getVar('UKI_CMDLINE')))
        bb.build.exec_func('do_uki', localdata)
    entry = os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), 'vmclient-%s.conf' % slots[0])
    with open(entry, 'w') as f:
        f.write(vmclient_boot_entry(slots[0], 'vmclient-0', d.getVar('VMCLIENT_UKI_DIR')))
    with open(os.path.join(d.getVar('DEPLOY_DIR_IMAGE'), 'vmclient-loader.conf'), 'w') as f:
        f.write("".join(line.strip() + "\n" for line in d.getVar('VMCLIENT_LOADER_CONF').split(';')))
}

# systemd-boot's loader.conf, in place of the one wic's bootimg_efi writes
# (it copies IMAGE_EFI_BOOT_FILES after writing its own): no command line
# editor at the menu, where a key press would otherwise boot a slot with
# another command line.  (The menu's "d", which makes an entry the default
# even without tries left, stays: systemd-boot has no setting for it; the
# timeout hides the menu unless a key is held.)
# Its lines, separated by ";".
VMCLIENT_LOADER_CONF = "timeout 3; editor no"

do_uki[prefuncs] += "vmclient_uki_first_slot"
do_uki[postfuncs] += "vmclient_uki_other_slots"
do_uki[vardeps] += "VMCLIENT_ROOT_SLOTS VMCLIENT_ROOT_PARTLABEL_PREFIX VMCLIENT_UKI_DIR VMCLIENT_LOADER_CONF"

# The root hash exists only once the hash tree is written.
addtask uki after do_image_verity before do_image_wic

# The first slot's UKI and entry on the ESP (wic's bootimg_efi copies them
# from DEPLOY_DIR_IMAGE).
IMAGE_EFI_BOOT_FILES = "\
    ${UKI_FILENAME};${VMCLIENT_UKI_DIR}/${UKI_FILENAME} \
    ${@'vmclient-%s.conf' % d.getVar('VMCLIENT_ROOT_SLOTS').split()[0]};loader/entries/${@'vmclient-%s.conf' % d.getVar('VMCLIENT_ROOT_SLOTS').split()[0]} \
    vmclient-loader.conf;loader/loader.conf \
"

# wic writes the first slot's verified root from IMGDEPLOYDIR: after the
# hash tree.
IMAGE_TYPEDEP:wic:append = " verity"
