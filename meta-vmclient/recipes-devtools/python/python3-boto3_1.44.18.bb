SUMMARY = "The AWS SDK for Python: the S3 client of vmclient's S3 transport"
DESCRIPTION = "boto3 makes the S3 client vmclient.transport.s3 speaks to \
               S3-compatible object storage (SeaweedFS, Ceph RGW, AWS S3) \
               with.  The pinned layers have no boto3 recipe; the version \
               is the one python-services/constraints-wrynose.txt pins."
HOMEPAGE = "https://github.com/boto/boto3"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=2ee41112a44fe7014dce33e26468ba93 \
                    file://NOTICE;md5=0b6905ac08c5f51cadd5e4085562b193"

SRC_URI[sha256sum] = "232b51762ec4dc19e3d309f06494b5107101fd487aac9a976f7dfab2a2277304"

inherit pypi setuptools3

RDEPENDS:${PN} += "\
    python3-botocore \
    python3-jmespath \
    python3-logging \
    python3-s3transfer \
"
