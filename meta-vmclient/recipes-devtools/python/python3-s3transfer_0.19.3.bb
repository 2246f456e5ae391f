SUMMARY = "Amazon S3 transfer manager for Python (boto3's uploads and downloads)"
DESCRIPTION = "s3transfer is the transfer manager boto3 imports; vmclient's \
               S3 transport uploads through botocore's client and loads it \
               with boto3.  The pinned layers have no s3transfer recipe; the \
               version is the one python-services/constraints-wrynose.txt \
               pins."
HOMEPAGE = "https://github.com/boto/s3transfer"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=3b83ef96387f14655fc854ddc3c6bd57 \
                    file://NOTICE.txt;md5=444061c9d5a5c33b435d249727c88781"

SRC_URI[sha256sum] = "8326acc3d056d7f7b8a37110c7d2aea41f67e83f6ae79cd3b5fbcca34c726406"

inherit pypi setuptools3

RDEPENDS:${PN} += "\
    python3-botocore \
    python3-logging \
    python3-threading \
"
