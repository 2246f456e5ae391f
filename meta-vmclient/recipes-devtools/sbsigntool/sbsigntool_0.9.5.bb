SUMMARY = "Tools that sign and verify EFI binaries for UEFI Secure Boot"
DESCRIPTION = "sbsign, sbverify, sbattach, sbvarsign, sbsiglist and \
               sbkeysync.  With VMCLIENT_SB_KEY and VMCLIENT_SB_CERT the \
               image signs its unified kernel image with sbsign (ukify's \
               signing tool) and systemd-boot's EFI binary likewise.  No \
               pinned layer builds it (uki.bbclass points at \
               meta-secure-core's recipe)."
HOMEPAGE = "https://git.kernel.org/pub/scm/linux/kernel/git/jejb/sbsigntools.git"
SECTION = "devel"
# sbsigntools itself is GPL-3.0-or-later (COPYING, with an exception for
# linking OpenSSL).  It links these ccan modules statically (lib/ccan.git,
# the modules create-ccan-tree copies for talloc, read_write_all,
# build_assert, array_size and endian, with their dependencies): talloc,
# read_write_all, endian, htable, list, typesafe_cb (LGPL-2.1 or later);
# failtest, tlist ("LGPL", the LGPL-3 text); time (BSD-MIT); compiler,
# build_assert, array_size, check_type, container_of, hash, str, tcon (public
# domain).  The per-module LICENSE files are symlinks to ccan's licenses/.
LICENSE = "GPL-3.0-or-later & LGPL-2.1-or-later & LGPL-3.0-only & MIT & PD"
LIC_FILES_CHKSUM = "\
    file://COPYING;md5=a7710ac18adec371b84a9594ed04fd20 \
    file://LICENSE.GPLv3;md5=9eef91148a9b14ec7f9df333daebc746 \
    file://lib/ccan.git/licenses/LGPL-2.1;md5=2d5025d4aa3495befef8f17206a5b0a1 \
    file://lib/ccan.git/licenses/LGPL-3;md5=6a6a8e020838b23406c81b19c1d46df6 \
    file://lib/ccan.git/licenses/BSD-MIT;md5=838c366f69b72c5df05c96dff79b35f2 \
"

# bfd.h (binutils) for the PE/COFF definitions, efi/efi.h (gnu-efi) for the
# EFI variable tools, libcrypto and libuuid.
DEPENDS = "binutils gnu-efi openssl util-linux-libuuid"

# The release "Version 0.9.5" (tag v0.9.5, 2023-03-19) and the ccan commit
# its lib/ccan.git submodule pins.  The submodule's own URL
# (git://git.ozlabs.org/~ccan/ccan) is fetched from ccan's GitHub mirror
# instead: the git:// protocol rarely passes a build host's firewall.
SRC_URI = "\
    git://git.kernel.org/pub/scm/linux/kernel/git/jejb/sbsigntools.git;protocol=https;branch=master;name=sbsigntools \
    git://github.com/rustyrussell/ccan.git;protocol=https;branch=master;name=ccan;destsuffix=${BB_GIT_DEFAULT_DESTSUFFIX}/lib/ccan.git \
"
SRCREV_sbsigntools = "9cfca9fe7aa7a8e29b92fe33ce8433e212c9a8ba"
SRCREV_ccan = "b1f28e17227f2320d07fe052a8a48942fe17caa5"
SRCREV_FORMAT = "sbsigntools_ccan"

# gnu-efi's hosts.
COMPATIBLE_HOST = "(x86_64.*|i.86.*|aarch64.*|arm.*|riscv64.*)-linux"

inherit autotools pkgconfig

def sbsigntool_efi_arch(d):
    import re
    arch = d.getVar("HOST_ARCH")
    if re.match(r"i[3-6]86$", arch):
        return "ia32"
    if arch.startswith("arm") and arch != "arm64":
        return "arm"
    return arch

# configure.ac hard-codes the build host's /usr/include/efi: gnu-efi's
# headers in the sysroot instead.
EXTRA_OEMAKE = "EFI_CPPFLAGS='-I${STAGING_INCDIR}/efi -I${STAGING_INCDIR}/efi/${@sbsigntool_efi_arch(d)} -DEFI_FUNCTION_WRAPPER'"

# The sources build with -Werror; OpenSSL 3 marks the 1.1 API they use as
# deprecated, and newer compilers warn about more than the release knew.
CFLAGS:append = " -Wno-error"

# What upstream's autogen.sh does before autoreconf, for the build host:
#  - lib/ccan, the build tree of the ccan modules the tools link: ccan's
#    create-ccan-tree compiles a helper that runs here, so with BUILD_CC;
#    ccan's Makefile would call whoami, which is not a host tool;
#  - AUTHORS and ChangeLog (autogen.sh writes them from git log), which
#    automake requires.
# And two changes for a cross build:
#  - only the tools: the manual pages run help2man on the tools just built
#    (impossible when cross-compiling), the tests need gnu-efi's crt0;
#  - configure looks for gnu-efi's crt0 (the tests') in the build host's
#    /usr/lib and fails without it: a warning instead.
do_configure:prepend() {
    if [ ! -e ${S}/lib/ccan ]; then
        sed -i -e 's/^SCOREDIR=.*/SCOREDIR=/' ${S}/lib/ccan.git/Makefile
        (
            cd ${S}
            CC="${BUILD_CC}" CFLAGS="${BUILD_CFLAGS}" LDFLAGS="${BUILD_LDFLAGS}" \
                lib/ccan.git/tools/create-ccan-tree --build-type=automake lib/ccan \
                talloc read_write_all build_assert array_size endian
        )
    fi
    touch ${S}/AUTHORS ${S}/ChangeLog
    sed -i -e 's|^SUBDIRS = .*|SUBDIRS = lib/ccan src|' ${S}/Makefile.am
    sed -i -e 's|AC_MSG_ERROR(\[cannot find the gnu-efi crt path\])|AC_MSG_WARN([no gnu-efi crt0: the tests cannot be built])|' \
        ${S}/configure.ac
}

BBCLASSEXTEND = "native"
