SUMMARY = "TCG TPM2 Software Stack: the libraries systemd's TPM2 support loads"
DESCRIPTION = "The TPM2 software stack (ESYS, SYS, MU, RC, the TCTI loader \
               and the device TCTI) that systemd-cryptenroll, \
               systemd-cryptsetup and systemd-repart load to seal and \
               unseal the data partition's LUKS2 key with the TPM2.  The \
               pinned layers have no tpm2-tss recipe; the FAPI and the \
               policy library are not built (nothing on the host uses them)."
HOMEPAGE = "https://github.com/tpm2-software/tpm2-tss"
SECTION = "libs"
LICENSE = "BSD-2-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=500b2e742befc3da00684d8a1d5fd9da"

DEPENDS = "autoconf-archive-native openssl"

# The release tarball (it carries the generated configure script).  The
# checksums are meta-security's (meta-tpm) for the same release; this layer
# was never built against the download itself (see PLAN-encryption.md).
SRC_URI = "https://github.com/tpm2-software/${BPN}/releases/download/${PV}/${BPN}-${PV}.tar.gz"
SRC_URI[sha256sum] = "37f1580200ab78305d1fc872d89241aaee0c93cbe85bc559bf332737a60d3be8"

UPSTREAM_CHECK_URI = "https://github.com/tpm2-software/${BPN}/releases"
CVE_PRODUCT = "tpm2_software_stack"

inherit autotools pkgconfig

# ESYS with OpenSSL as its crypto back end; no FAPI (curl, json-c and a key
# store) and no policy library (json-c); udev rules, sysusers and tmpfiles
# entries in the locations systemd reads (the "tss" user and group own
# /dev/tpmrm0; sysusers.d is applied at build time on the read-only root).
EXTRA_OECONF = "\
    --disable-doxygen-doc \
    --disable-fapi \
    --disable-policy \
    --with-crypto=ossl \
    --runstatedir=/run \
    --with-udevrulesdir=${nonarch_base_libdir}/udev/rules.d \
    --with-sysusersdir=${nonarch_libdir}/sysusers.d \
    --with-tmpfilesdir=${nonarch_libdir}/tmpfiles.d \
"

# The package names systemd's PACKAGECONFIG[tpm2] asks for at run time:
# tpm2-tss (udev rules, sysusers and tmpfiles entries), libtss2 (the
# libraries) and libtss2-tcti-device (the TCTI for /dev/tpmrm0).  The device
# TCTI comes first so that the libtss2 glob does not take it.
PACKAGE_BEFORE_PN = "libtss2-tcti-device libtss2"

FILES:libtss2-tcti-device += "${libdir}/libtss2-tcti-device${SOLIBS}"
FILES:libtss2 += "${libdir}/libtss2-*${SOLIBS}"
FILES:${PN} += "\
    ${nonarch_base_libdir}/udev/rules.d \
    ${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
"

RDEPENDS:libtss2 = "libtss2-tcti-device"
RDEPENDS:${PN} = "libtss2"
