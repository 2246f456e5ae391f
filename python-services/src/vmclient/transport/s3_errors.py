"""What a failed S3 request means for the repository: botocore's errors and the store's
answers (HTTP status, error code) as :class:`S3Refused`, :class:`S3Unavailable` or
:class:`~vmclient.store.errors.ObjectNotFound` (:mod:`.s3` runs the requests)."""

from __future__ import annotations

from ..store.errors import ObjectNotFound
from .s3_target import S3Refused, S3Target, S3Unavailable


def translated(exc: Exception, t: S3Target, op: str, path: str) -> Exception:
    """The repository's error for ``exc``, a botocore ``ClientError`` (the store
    answered) or ``BotoCoreError`` (it could not be asked), raised by ``op`` of
    ``path`` on the store of ``t``."""
    from botocore.exceptions import BotoCoreError, EndpointConnectionError, NoCredentialsError
    if isinstance(exc, NoCredentialsError):
        return S3Refused(t.server, op, path, "no credentials: a laptop reads them "
                         "from [repository] s3_credentials (issued at enrolment), "
                         "vmclient-admin from --s3-credentials or AWS_ACCESS_KEY_ID/"
                         "AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, EndpointConnectionError):
        return S3Unavailable(op, path, t.server, t.attempts,
                             f"{exc} (is the store up and reachable?)")
    if isinstance(exc, BotoCoreError):
        return S3Unavailable(op, path, t.server, t.attempts, exc)
    answered = status(exc)
    if answered == 404 or code(exc) in ("NoSuchKey", "NotFound"):
        if code(exc) == "NoSuchBucket":
            return S3Refused(t.server, op, path, f"no bucket {t.bucket!r}")
        return ObjectNotFound(path)
    if answered in (401, 403):
        return S3Refused(t.server, op, path,
                         f"access denied ({code(exc)}): are the credentials this device's "
                         "or the admin's, and enrolled on the store?")
    if answered is not None and answered >= 500:
        return S3Unavailable(op, path, t.server, t.attempts, exc)
    return S3Refused(t.server, op, path, exc)


def status(exc: Exception) -> int | None:
    """The HTTP status the store answered, if it answered."""
    meta = getattr(exc, "response", {}).get("ResponseMetadata", {})
    answered = meta.get("HTTPStatusCode")
    return int(answered) if answered is not None else None


def retried(exc: Exception) -> bool:
    """Whether botocore sent the request more than once (an earlier attempt may have
    gone through unseen)."""
    meta = getattr(exc, "response", {}).get("ResponseMetadata", {})
    return int(meta.get("RetryAttempts", 0) or 0) > 0


def code(exc: Exception) -> str:
    """The store's error code (``NoSuchKey``, ``AccessDenied``, …); empty if none."""
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
