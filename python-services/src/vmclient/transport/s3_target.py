"""Where an S3 repository is and with which key: ``s3://`` URLs, the shared-credentials
file, and the errors of reaching the store (:mod:`.s3` speaks to it)."""

from __future__ import annotations

import configparser
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..store.errors import LocalSyncError
from ..store.remote import check_path
from .target import RemoteRefused, RemoteUnavailable

MiB = 1 << 20
DEFAULT_CONNECTIONS = 8  # requests in flight: S3 scales out, there is no per-connection crypto


class S3Unavailable(RemoteUnavailable):
    """S3 {} of {!r} on {} failed after {} attempt(s): {}"""


class S3Refused(RemoteRefused):
    """S3 store {} refused {} of {!r}: {}"""


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)


def read_credentials(path: Path, profile: str = "default") -> S3Credentials:
    """An access key from an AWS shared-credentials file (``[default]``
    ``aws_access_key_id`` / ``aws_secret_access_key``), refused unless only its owner
    can read it (as OpenSSH refuses a private key others can read)."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"S3 credentials file {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"S3 credentials file {path}: {exc.strerror or exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"S3 credentials file {path} is readable by others "
                         f"(mode {stat.S_IMODE(mode):o}): chmod 600 it")
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, str(path))
        section = parser[profile]
        return S3Credentials(section["aws_access_key_id"].strip(),
                             section["aws_secret_access_key"].strip())
    except (configparser.Error, KeyError) as exc:
        raise UsageError(f"S3 credentials file {path}: expected [{profile}] with "
                         f"aws_access_key_id and aws_secret_access_key ({exc})") from None


def credentials_text(creds: S3Credentials, profile: str = "default") -> str:
    """The shared-credentials file :func:`read_credentials` reads."""
    return (f"[{profile}]\naws_access_key_id = {creds.access_key}\n"
            f"aws_secret_access_key = {creds.secret_key}\n")


@dataclass(frozen=True)
class S3Target:
    """Where a repository is on S3 and with which key.  ``credentials`` None: botocore's
    own chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/credentials``,
    ``AWS_PROFILE``…); ``endpoint`` None: botocore's (``AWS_ENDPOINT_URL``, else AWS)."""

    bucket: str
    prefix: str = ""  # the repository's root inside the bucket ("" = the bucket's root)
    endpoint: str | None = None
    region: str = "us-east-1"
    credentials: S3Credentials | None = None
    connections: int = DEFAULT_CONNECTIONS
    attempts: int = 5  # botocore's retries (standard mode: exponential back-off + jitter)
    timeout: float = 30.0
    multipart_threshold: int = 32 * MiB  # larger objects go up in parts
    part_size: int = 16 * MiB

    @property
    def server(self) -> str:
        return f"{self.endpoint or 'AWS'}/{self.bucket}"

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path


def parse_url(location: str, *, credentials: S3Credentials | None = None,
              connections: int | None = None) -> S3Target:
    """``s3://bucket/prefix[?endpoint=URL&region=NAME]`` as an :class:`S3Target`."""
    from urllib.parse import parse_qs, unquote, urlsplit
    url = urlsplit(location)
    bucket = url.netloc
    prefix = unquote(url.path).strip("/")
    if not bucket or "@" in bucket or ":" in bucket:
        raise UsageError(f"repository URL {location!r}: expected s3://bucket/prefix "
                         "(the endpoint goes in ?endpoint=…, credentials in a file)")
    if prefix:
        try:
            check_path(prefix)
        except LocalSyncError:
            raise UsageError(f"repository URL {location!r}: invalid prefix {prefix!r}") \
                from None
    try:
        query = parse_qs(url.query, strict_parsing=bool(url.query))
    except ValueError as exc:
        raise UsageError(f"repository URL {location!r}: {exc}") from None
    unknown = set(query) - {"endpoint", "region"}
    if unknown:
        raise UsageError(f"repository URL {location!r}: unknown parameter(s) "
                         f"{', '.join(sorted(unknown))} (endpoint, region)")
    endpoint = query.get("endpoint", [None])[-1]
    if endpoint is not None and not endpoint.startswith(("https://", "http://")):
        raise UsageError(f"repository URL {location!r}: endpoint must be http(s)://host[:port]")
    return S3Target(bucket=bucket, prefix=prefix, endpoint=endpoint,
                    region=query.get("region", ["us-east-1"])[-1], credentials=credentials,
                    connections=connections or DEFAULT_CONNECTIONS)
