"""The conditional requests the repository relies on, probed on an S3 store once
(``vmclient-admin init``), and the decision whether the store may hold a repository.

Each condition is probed by making the request that must be refused and checking that
it is (412 ``PreconditionFailed``): a store that silently ignores a condition header
answers 200 and does what was asked unconditionally.  :func:`probe` makes the requests
(a blocking function of a boto3 client: :class:`~vmclient.transport.s3.S3Store` runs it
in its pool), :func:`refusal` is the pure decision.  repository-format.md §8 and §11.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .s3_errors import status
from .s3_target import S3Refused


@dataclass(frozen=True)
class Condition:
    name: str        # the key in the probe's results (and bench/s3_probe.py's JSON)
    operation: str   # the request and header, as the store's documentation names them
    needed_for: str  # what the repository loses on a store that ignores it


CONDITIONS = (
    Condition("exclusive_put", "PutObject with If-None-Match: *",
              "exclusive creation: packs, indexes, snapshots, orders"),
    Condition("exclusive_multipart", "CompleteMultipartUpload with If-None-Match: *",
              "exclusive creation of an object above the multipart threshold, "
              "e.g. a large index or manifest"),
    Condition("exclusive_copy", "CopyObject with If-None-Match: *",
              "the lock's conditional move"),
    Condition("copy_source_if_match", "CopyObject with x-amz-copy-source-if-match",
              "the lock's conditional move"),
    Condition("delete_if_match", "DeleteObject with If-Match",
              "the lock's compare-and-delete"),
)

_NO_ETAG = '"00000000000000000000000000000000"'  # the ETag of no object the probe writes


def refusal(server: str, path: str, results: Mapping[str, bool]) -> S3Refused | None:
    """The error refusing the store at ``server`` if a condition was not honoured (or
    not probed), naming each one; None if the store may hold a repository."""
    ignored = [c for c in CONDITIONS if results.get(c.name) is not True]
    if not ignored:
        return None
    what = "; ".join(f"{c.operation} (needed for {c.needed_for})" for c in ignored)
    return S3Refused(server, "the conditional-request check", path,
                     f"it ignores {what}. A repository on this store could have objects "
                     "overwritten or a lock taken twice. Use a store release that honours "
                     "these conditions (bench/s3_probe.py lists which it does), or "
                     "another store")


def probe(client: Any, bucket: str, key: str) -> dict[str, bool]:
    """Whether the store honours each of :data:`CONDITIONS`, probed on ``key`` and
    names beside it (``key`` must be fresh: a name of this run's own); everything
    written is removed after.  Errors other than 412 are raised (the caller translates
    them: no access, store down)."""
    copy, other = key + "-copy", key + "-other"
    results: dict[str, bool] = {}

    def refused(request: Any, **kw: Any) -> bool:
        try:
            request(Bucket=bucket, **kw)
        except client.exceptions.ClientError as exc:
            if status(exc) == 412:
                return True
            raise
        return False

    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"1", IfNoneMatch="*")
        results["exclusive_put"] = refused(client.put_object, Key=key, Body=b"2",
                                           IfNoneMatch="*")
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        try:
            part = client.upload_part(Bucket=bucket, Key=key, UploadId=upload,
                                      PartNumber=1, Body=b"3")  # the last part: any size
            results["exclusive_multipart"] = refused(
                client.complete_multipart_upload, Key=key, UploadId=upload, IfNoneMatch="*",
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
        finally:  # the refused upload is left incomplete (a completed one: 404, no harm)
            with contextlib.suppress(client.exceptions.ClientError):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
        client.put_object(Bucket=bucket, Key=copy, Body=b"c")
        source = {"Bucket": bucket, "Key": key}
        results["exclusive_copy"] = refused(client.copy_object, Key=copy, CopySource=source,
                                            IfNoneMatch="*")
        results["copy_source_if_match"] = refused(client.copy_object, Key=other,
                                                  CopySource=source,
                                                  CopySourceIfMatch=_NO_ETAG)
        results["delete_if_match"] = refused(client.delete_object, Key=copy,
                                             IfMatch=_NO_ETAG)
    finally:
        for k in (key, copy, other):
            with contextlib.suppress(client.exceptions.ClientError):
                client.delete_object(Bucket=bucket, Key=k)
    return results
