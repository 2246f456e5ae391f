"""A :class:`~vmclient.store.remote.RemoteStore` on S3-compatible object storage.

``s3://bucket/prefix[?endpoint=https://host:port&region=…]``: the repository's paths
are the keys below ``prefix/`` in ``bucket``.  Spoken by boto3/botocore's public
client API (SigV4; retries with back-off: botocore's ``standard`` retry mode), its
blocking calls run in a pool of ``connections`` threads.

The guarantees of repository-format.md §8.1 and §10, restated for S3 (§11):

* **Atomic put.** An S3 ``PUT`` (and a completed multipart upload) makes an object
  appear whole or not at all: no temporary names.  An object larger than
  ``multipart_threshold`` is uploaded in parts (``part_size``) and completed; an
  upload cut short leaves an *incomplete multipart upload*, invisible to ``GET`` and
  ``LIST``, which :meth:`S3Store.sweep_temporaries` aborts (the S3 form of a
  ``.tmp-*`` file).
* **Exclusive creation** is ``If-None-Match: *`` on ``PutObject`` and
  ``CompleteMultipartUpload``: the store answers 412 if the key exists.  A 412 on a
  retried request whose first attempt went through unseen is told apart by the
  ETag: the same bytes already there count as this put (objects under exclusive
  creation are content-addressed or carry a nonce).
* **Rename** (only the lock's compare-and-delete uses it) is a conditional move: copy
  with ``x-amz-copy-source-if-match`` (the ETag just read) and ``If-None-Match: *``,
  then delete the source with ``If-Match`` of that ETag.  If the source changed in
  between (a fresh lock taken), the copy is removed again and the rename reports
  the source gone, so it never deletes an object it did not read.

A store that does not honour these conditions (they were added to AWS S3 in 2024)
would let two writers both "create" an object, or a lock be taken twice:
:meth:`S3Store.check_conditions` probes each of them once (:mod:`.s3_conditions`:
also on a multipart completion, which Ceph RGW 16.2 ignores while honouring it on a
put) and refuses such a store.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import posixpath
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..store.errors import LocalSyncError, ObjectNotFound
from ..store.remote import TMP_PREFIX, Entry, LockingMixin, check_path, temporaries_of
from . import s3_conditions
from .s3_errors import code, retried, status, translated
from .s3_target import (
    DEFAULT_CONNECTIONS,
    MiB,
    S3Credentials,
    S3Refused,
    S3Target,
    S3Unavailable,
    credentials_text,
    parse_url,
    read_credentials,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
__all__ = ["DEFAULT_CONNECTIONS", "S3Credentials", "S3Refused", "S3Store", "S3Target",
           "S3Unavailable", "credentials_text", "open_s3", "parse_url", "read_credentials"]


def _etag(data: memoryview, part_size: int | None) -> str:
    """The ETag S3 gives an object uploaded whole (MD5) or in parts of ``part_size``."""
    if part_size is None:
        return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
    digests = b"".join(hashlib.md5(data[i:i + part_size], usedforsecurity=False).digest()
                       for i in range(0, len(data), part_size))
    parts = (len(data) + part_size - 1) // part_size
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{parts}"'


class S3Store(LockingMixin):
    """The repository at ``target`` (see :class:`S3Target`)."""

    def __init__(self, target: S3Target,
                 clock: Callable[[], int] = lambda: int(time.time())) -> None:
        import boto3
        from botocore.config import Config
        self.target = target
        self.clock = clock
        creds = target.credentials
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=target.endpoint, region_name=target.region,
            aws_access_key_id=creds.access_key if creds else None,
            aws_secret_access_key=creds.secret_key if creds else None,
            config=Config(retries={"mode": "standard", "max_attempts": target.attempts},
                          connect_timeout=target.timeout, read_timeout=target.timeout,
                          max_pool_connections=max(1, target.connections),
                          s3={"addressing_style": "path" if target.endpoint else "auto"}))
        self._executor = ThreadPoolExecutor(max_workers=max(1, target.connections),
                                            thread_name_prefix="vmclient-s3")
        self.multipart_uploads = 0  # objects uploaded in parts (tests, the bench)
        self._warned_sweep = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> S3Store:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        self.client.close()

    async def check(self) -> None:
        """Reach the bucket now (and fail now) rather than at the first request."""
        await self._run("list", self.target.prefix or "/", lambda: self.client.list_objects_v2(
            Bucket=self.target.bucket, Prefix=self.target.key(""), MaxKeys=1))

    async def probe_conditions(self, path: str) -> dict[str, bool]:
        """Which conditional requests the store honours (:mod:`.s3_conditions`), probed
        at ``path`` plus a random suffix (a name of this run's own, removed after)."""
        key = self.target.key(f"{check_path(path)}-{secrets.token_hex(8)}")
        return await self._run("check", path, lambda: s3_conditions.probe(
            self.client, self.target.bucket, key))

    async def check_conditions(self, path: str) -> None:
        """Refuse a store that ignores a condition the repository relies on
        (``If-None-Match: *`` on a put and on a multipart completion, the lock's
        conditional copy and delete): :class:`S3Refused` naming each."""
        refused = s3_conditions.refusal(self.target.server, path,
                                        await self.probe_conditions(path))
        if refused is not None:
            raise refused

    # --- the RemoteStore operations ----------------------------------------------------------

    async def list(self, prefix: str) -> builtins.list[Entry]:
        base = self.target.key(check_path(prefix)) + "/"
        strip = len(self.target.key(""))

        def walk() -> builtins.list[Entry]:
            out = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.target.bucket, Prefix=base)
            for page in pages:
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/") or posixpath.basename(key).startswith("."):
                        continue  # a directory marker, or a hidden name (not ours)
                    out.append(Entry(key[strip:], int(obj.get("Size", 0))))
            return sorted(out, key=lambda e: e.path)

        return await self._run("list", prefix, walk)

    async def get(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        key = self.target.key(check_path(path))
        if length is not None and length <= 0:
            return b""
        parts: builtins.list[bytes] = []
        got = [0]

        def read() -> bytes:
            # a retry (a stream cut mid-body) goes on where the last one stopped
            start = offset + got[0]
            rng: str | None = f"bytes={start}-" if start else None
            if length is not None:
                rng = f"bytes={start}-{offset + length - 1}"
            kw = {"Range": rng} if rng else {}
            try:
                body = self.client.get_object(Bucket=self.target.bucket, Key=key, **kw)["Body"]
            except self._client_error as exc:
                if code(exc) == "InvalidRange":  # at or past the end: nothing more
                    return b"".join(parts)
                raise
            with body:
                for piece in body.iter_chunks(1 * MiB):
                    parts.append(piece)
                    got[0] += len(piece)
            return b"".join(parts)

        return await self._run("get", path, read, stream=True)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        key = self.target.key(check_path(path))
        view = memoryview(data)
        t = self.target
        cond = {"IfNoneMatch": "*"} if exclusive else {}

        def put() -> None:
            multipart = len(view) > t.multipart_threshold
            try:
                if multipart:
                    self._put_parts(key, view, cond)
                else:
                    body = data if isinstance(data, bytes) else view.tobytes()  # (no copy)
                    self.client.put_object(Bucket=t.bucket, Key=key, Body=body, **cond)
            except self._client_error as exc:
                if not (exclusive and status(exc) == 412):
                    raise
                # a retried request whose first attempt stored these very bytes unseen
                # (its answer lost): done
                if retried(exc) and \
                        self.etag_of(key) == _etag(view, t.part_size if multipart else None):
                    return
                raise LocalSyncError(f"repository object exists: {path}") from None

        await self._run("put", path, put)

    def _put_parts(self, key: str, view: memoryview, cond: dict[str, str]) -> None:
        t = self.target
        upload = self.client.create_multipart_upload(Bucket=t.bucket, Key=key)["UploadId"]
        try:
            done = []
            for number, start in enumerate(range(0, len(view), t.part_size), 1):
                part = self.client.upload_part(Bucket=t.bucket, Key=key, UploadId=upload,
                                               PartNumber=number,
                                               Body=view[start:start + t.part_size].tobytes())
                done.append({"PartNumber": number, "ETag": part["ETag"]})
            self.client.complete_multipart_upload(Bucket=t.bucket, Key=key, UploadId=upload,
                                                  MultipartUpload={"Parts": done}, **cond)
            self.multipart_uploads += 1
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=t.bucket, Key=key, UploadId=upload)
            except Exception as exc:  # swept later (sweep_temporaries)
                log.info("S3 %s: aborting the upload of %s failed: %s", t.server, key, exc)
            raise

    async def delete(self, path: str) -> None:
        key = self.target.key(check_path(path))
        await self._run("delete", path, lambda: self.client.delete_object(
            Bucket=self.target.bucket, Key=key))

    async def rename(self, path: str, new: str) -> None:
        """A conditional move (copy if the source is the one read, if the target is
        absent; then delete the source if it is still that one): fails if ``new`` exists,
        :class:`ObjectNotFound` if ``path`` is absent or changed meanwhile."""
        t = self.target
        src, dst = t.key(check_path(path)), t.key(check_path(new))

        def move() -> None:
            etag = self.etag_of(src)
            if etag is None:
                raise ObjectNotFound(path)
            try:
                self.client.copy_object(Bucket=t.bucket, Key=dst, IfNoneMatch="*",
                                        CopySource={"Bucket": t.bucket, "Key": src},
                                        CopySourceIfMatch=etag)
            except self._client_error as exc:
                if status(exc) not in (404, 412):
                    raise
                if self.etag_of(dst) is not None:
                    raise LocalSyncError(f"repository object exists: {new}") from None
                raise ObjectNotFound(path) from None
            try:
                self.client.delete_object(Bucket=t.bucket, Key=src, IfMatch=etag)
            except self._client_error as exc:
                if status(exc) not in (404, 412):
                    raise
                # the source changed after the copy (a fresh lock): it is not ours to move
                self.client.delete_object(Bucket=t.bucket, Key=dst)
                raise ObjectNotFound(path) from None

        await self._run("rename", path, move)

    async def sweep_temporaries(self, prefix: str, older_than: int | None = 3600, *,
                                recursive: bool = True, names: str = TMP_PREFIX) -> int:
        """Abort the incomplete multipart uploads a killed run left below ``prefix``
        (the S3 form of a ``.tmp-*`` file: all if ``older_than`` is None, the caller
        holds that directory's lock; only those directly in it if not ``recursive``;
        only those of objects whose temporaries' names begin with ``names``, e.g. a
        lock's, :func:`~vmclient.store.remote.temporaries_of`); how many."""
        if not names.startswith(TMP_PREFIX):
            raise LocalSyncError(f"not a prefix of temporary file names: {names!r}")
        t = self.target
        base = t.key(check_path(prefix)) + "/"

        def sweep() -> int:
            cutoff = None if older_than is None else time.time() - older_than
            removed = 0
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=t.bucket, Prefix=base)
            for page in pages:
                for up in page.get("Uploads", ()):
                    key = up["Key"]
                    if not recursive and "/" in key[len(base):]:
                        continue
                    if not temporaries_of(key).startswith(names):
                        continue
                    if cutoff is not None and up["Initiated"].timestamp() >= cutoff:
                        continue
                    self.client.abort_multipart_upload(Bucket=t.bucket, Key=key,
                                                       UploadId=up["UploadId"])
                    removed += 1
            return removed

        try:
            return await self._run("sweep", prefix, sweep)
        except S3Refused as exc:
            # a device's identity may not list uploads (SeaweedFS 4.48 grants
            # ListMultipartUploads only with s3:* on the bucket): they wait for the admin's
            if not self._warned_sweep:
                self._warned_sweep = True
                log.warning("S3 %s: cannot list incomplete uploads below %s (%s); they are "
                            "left to a run with that right", t.server, prefix, exc)
            return 0

    # --- requests, retries and error translation ---------------------------------------------

    @property
    def _client_error(self) -> type[Exception]:
        return self.client.exceptions.ClientError  # type: ignore[no-any-return]

    def etag_of(self, key: str) -> str | None:
        try:
            return str(self.client.head_object(Bucket=self.target.bucket, Key=key)["ETag"])
        except self._client_error as exc:
            if status(exc) == 404:
                return None
            raise

    async def _run(self, op: str, path: str, fn: Callable[[], T], *, stream: bool = False
                   ) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, op, path, fn, stream)

    def _call(self, op: str, path: str, fn: Callable[[], T], stream: bool) -> T:
        from botocore.exceptions import (
            BotoCoreError,
            ConnectionClosedError,
            IncompleteReadError,
            ReadTimeoutError,
            ResponseStreamingError,
        )
        t = self.target
        # botocore retries each request (standard mode); a body cut mid-stream is not a
        # request botocore sees fail, so a read is retried here, from where it stopped
        tries = t.attempts if stream else 1
        for attempt in range(tries):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                return fn()
            except (IncompleteReadError, ResponseStreamingError, ReadTimeoutError,
                    ConnectionClosedError) as exc:
                if attempt + 1 < tries:
                    log.info("S3 %s: %s of %s cut short (attempt %d/%d): %s", t.server, op,
                             path, attempt + 1, tries, exc)
                    continue
                raise S3Unavailable(op, path, t.server, t.attempts, exc) from exc
            except (self._client_error, BotoCoreError) as exc:
                raise translated(exc, t, op, path) from exc
        raise AssertionError("unreachable")


def open_s3(location: str, *, credentials: str | Path | None = None,
            connections: int | None = None) -> S3Store:
    """The store at an ``s3://`` ``location``; ``credentials`` a shared-credentials file
    (None: botocore's chain, e.g. the environment's ``AWS_ACCESS_KEY_ID``)."""
    creds = read_credentials(Path(credentials)) if credentials else None
    return S3Store(parse_url(location, credentials=creds, connections=connections))
