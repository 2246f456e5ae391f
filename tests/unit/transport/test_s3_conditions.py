"""The decision on an S3 store's conditional requests (vmclient.transport.s3_conditions):
what ``vmclient-admin init`` refuses.  The probe itself runs against SeaweedFS in
tests/integration/test_s3_store.py (which honours every condition); Ceph RGW 16.2, which
ignores If-None-Match on a multipart completion, was probed by hand (capacity-plan.md §6)."""

from __future__ import annotations

import pytest

from vmclient.errors import VMClientError
from vmclient.transport.s3_conditions import CONDITIONS, refusal

SERVER = "http://rgw.example:7480"
ALL = {c.name: True for c in CONDITIONS}


def test_a_store_honouring_every_condition_is_accepted() -> None:
    assert refusal(SERVER, "init-probe", ALL) is None


def test_a_store_ignoring_if_none_match_on_multipart_completion_is_refused() -> None:
    """Ceph RGW 16.2: an exclusive PUT is refused, an exclusive completion replaces."""
    err = refusal(SERVER, "init-probe", {**ALL, "exclusive_multipart": False})
    assert isinstance(err, VMClientError)
    msg = str(err)
    assert SERVER in msg and "init-probe" in msg
    assert "CompleteMultipartUpload with If-None-Match: *" in msg
    assert "above the multipart threshold" in msg
    assert "PutObject" not in msg and "DeleteObject" not in msg  # only what it ignores
    assert "Use a store release that honours" in msg


@pytest.mark.parametrize("name, operation", [
    ("exclusive_put", "PutObject with If-None-Match: *"),
    ("exclusive_copy", "CopyObject with If-None-Match: *"),
    ("copy_source_if_match", "CopyObject with x-amz-copy-source-if-match"),
    ("delete_if_match", "DeleteObject with If-Match"),
])
def test_each_ignored_condition_is_named(name: str, operation: str) -> None:
    err = refusal(SERVER, "p", {**ALL, name: False})
    assert err is not None and operation in str(err)


def test_a_condition_not_probed_counts_as_ignored() -> None:
    partial = {k: v for k, v in ALL.items() if k != "delete_if_match"}
    err = refusal(SERVER, "p", partial)
    assert err is not None and "DeleteObject with If-Match" in str(err)
    assert "CompleteMultipartUpload" not in str(err)
