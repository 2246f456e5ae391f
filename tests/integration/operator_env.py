"""The storage server's operator, changing stored bytes behind the clients' backs: a file
on the server's disk (a local repository, the SFTP server's), or an object on S3 written
with the admin's own credentials (boto3 directly, not through vmclient's store)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vmclient.transport.s3 import S3Store


@dataclass
class Operator:
    root: Path | None  # the repository's directory on the server; None on S3
    s3: S3Store | None = None  # on S3: a store with the admin's credentials

    def read(self, path: str) -> bytes:
        if self.root is not None:
            return (self.root / path).read_bytes()
        assert self.s3 is not None
        t = self.s3.target
        return bytes(self.s3.client.get_object(Bucket=t.bucket, Key=t.key(path))["Body"].read())

    def write(self, path: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / path).write_bytes(data)  # (an existing file: its owner stays)
            return
        assert self.s3 is not None
        t = self.s3.target
        self.s3.client.put_object(Bucket=t.bucket, Key=t.key(path), Body=data)

    def names(self, prefix: str) -> list[str]:
        """The repository paths of every object below ``prefix``, sorted."""
        if self.root is not None:
            return sorted(str(p.relative_to(self.root)) for p in (self.root / prefix).rglob("*")
                          if p.is_file())
        assert self.s3 is not None
        t = self.s3.target
        pages = self.s3.client.get_paginator("list_objects_v2").paginate(
            Bucket=t.bucket, Prefix=t.key(prefix) + "/")
        return sorted(o["Key"][len(t.key("")):] for page in pages
                      for o in page.get("Contents", ()))

    def flip(self, path: str, pos: int, bit: int = 0x40) -> bytes:
        """Flip a bit of the byte at ``pos``; the object's bytes before."""
        data = self.read(path)
        self.write(path, data[:pos] + bytes([data[pos] ^ bit]) + data[pos + 1:])
        return data
