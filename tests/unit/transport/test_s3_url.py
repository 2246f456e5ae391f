"""The pure parts of the S3 transport: ``s3://`` URLs, the credentials file, the ETag a
retried exclusive put is recognised by."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vmclient.errors import UsageError
from vmclient.transport import Repository, open_store
from vmclient.transport.s3 import (
    S3Credentials,
    S3Store,
    _etag,
    credentials_text,
    parse_url,
    read_credentials,
)


def test_a_url_names_bucket_prefix_endpoint_and_region() -> None:
    t = parse_url("s3://fleet/dc1/repo?endpoint=https://s3.example:8333&region=eu-west-1")
    assert (t.bucket, t.prefix, t.endpoint, t.region) == (
        "fleet", "dc1/repo", "https://s3.example:8333", "eu-west-1")
    assert t.key("devices/x/lock") == "dc1/repo/devices/x/lock"
    root = parse_url("s3://fleet")
    assert (root.prefix, root.endpoint, root.key("catalog")) == ("", None, "catalog")


@pytest.mark.parametrize(("url", "problem"), [
    ("s3:///repo", "expected s3://bucket/prefix"),
    ("s3://key:secret@fleet/repo", "expected s3://bucket/prefix"),
    ("s3://fleet/../etc", "invalid prefix"),
    ("s3://fleet/.hidden", "invalid prefix"),
    ("s3://fleet/r?endpoint=ftp://x", "endpoint must be http"),
    ("s3://fleet/r?profile=x", "unknown parameter"),
])
def test_a_bad_url_is_refused_naming_it(url: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem) as exc:
        parse_url(url)
    assert url.split("?", maxsplit=1)[0][:12] in str(exc.value)


def test_the_credentials_file_is_read_and_refused_if_others_can_read_it(tmp_path: Path
                                                                        ) -> None:
    path = tmp_path / "creds"
    path.write_text(credentials_text(S3Credentials("AKID", "s3cr3t")))
    path.chmod(0o600)
    creds = read_credentials(path)
    assert creds == S3Credentials("AKID", "s3cr3t") and "s3cr3t" not in repr(creds)
    path.chmod(0o640)
    with pytest.raises(UsageError, match="readable by others"):
        read_credentials(path)
    path.chmod(0o600)
    path.write_text("[default]\naws_access_key_id = AKID\n")
    with pytest.raises(UsageError, match="aws_secret_access_key"):
        read_credentials(path)
    with pytest.raises(UsageError, match="does not exist"):
        read_credentials(tmp_path / "absent")


def test_open_store_and_the_repository_section_open_an_s3_store(tmp_path: Path) -> None:
    store = open_store("s3://fleet/r?endpoint=http://127.0.0.1:1")
    assert isinstance(store, S3Store) and store.target.credentials is None
    creds = tmp_path / "s3-credentials"
    creds.write_text(credentials_text(S3Credentials("AKID", "x")))
    creds.chmod(0o600)
    opened = Repository("s3://fleet/r?endpoint=http://127.0.0.1:1", s3_credentials=creds).open()
    assert isinstance(opened, S3Store)
    assert opened.target.credentials == S3Credentials("AKID", "x")
    with pytest.raises(UsageError, match="sftp://, s3:// or a local path"):
        open_store("gs://fleet/r")


def test_the_etag_of_a_whole_and_a_multipart_upload() -> None:
    data = memoryview(bytes(range(256)) * 100)
    assert _etag(data, None) == f'"{hashlib.md5(data).hexdigest()}"'
    parts = b"".join(hashlib.md5(data[i:i + 10000]).digest() for i in range(0, 25600, 10000))
    assert _etag(data, 10000) == f'"{hashlib.md5(parts).hexdigest()}-3"'


def test_a_devices_policy_reaches_its_own_prefix_and_reads_the_shared_objects() -> None:
    from vmclient.admin.s3iam import device_policy
    dev = "a" * 32
    policy = device_policy("fleet", "dc1", dev)
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    assert by_sid["ReadShared"]["Resource"] == [
        "arn:aws:s3:::fleet/dc1/config", "arn:aws:s3:::fleet/dc1/catalog",
        "arn:aws:s3:::fleet/dc1/images/*", f"arn:aws:s3:::fleet/dc1/devices/{dev}/*"]
    writes = by_sid["WriteOwn"]["Resource"]
    assert writes == [f"arn:aws:s3:::fleet/dc1/devices/{dev}/{p}"
                      for p in ("lock", "lock.gone/*", "vms/*", "reports/*")]
    assert not [r for r in writes if r.endswith(("/device", "/orders/*", f"{dev}/*"))]
    assert by_sid["ListOwnAndImages"]["Condition"] == {
        "StringLike": {"s3:prefix": [f"dc1/devices/{dev}/*", "dc1/images/*"]}}
    assert device_policy("fleet", "", dev)["Statement"][0]["Resource"][0] == \
        "arn:aws:s3:::fleet/config"
