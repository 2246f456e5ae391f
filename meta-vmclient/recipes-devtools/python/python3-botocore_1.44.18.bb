SUMMARY = "The low-level core of the AWS SDK for Python (S3 requests, SigV4, retries)"
DESCRIPTION = "botocore signs and sends S3 requests for vmclient's S3 \
               transport (vmclient.transport.s3), through boto3.  The \
               pinned layers have no botocore recipe; the version is the \
               one python-services/constraints-wrynose.txt pins."
HOMEPAGE = "https://github.com/boto/botocore"
SECTION = "devel/python"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE.txt;md5=2ee41112a44fe7014dce33e26468ba93 \
                    file://NOTICE;md5=1096be3d7b0b4bba1b7a192123bf750a"

SRC_URI[sha256sum] = "c78f0a2346b4700d77702530d04c1fed525ef0bb9723218eb8a7cfeae07b6b28"

inherit pypi setuptools3

RDEPENDS:${PN} += "\
    python3-dateutil \
    python3-email \
    python3-io \
    python3-jmespath \
    python3-json \
    python3-logging \
    python3-netclient \
    python3-urllib3 \
    python3-xml \
"
