"""A device's own S3 identity, issued and revoked through the store's IAM API.

On an ``s3://`` repository each device has an access key of its own whose policy
reaches only what the device reads and writes (repository-format.md §11,
"Confinement on S3"): :func:`device_policy` is that policy (pure), :func:`issue`
and :func:`revoke` speak the AWS IAM API (boto3's ``iam`` client: ``CreateUser``,
``PutUserPolicy``, ``CreateAccessKey``; ``DeleteAccessKey``, ``DeleteUserPolicy``,
``DeleteUser``) at the store's endpoint with the admin's key — SeaweedFS's S3
gateway serves it on the S3 port (``weed s3 -iam.readOnly=false``), AWS at IAM.

    vmclient-admin … s3-identity issue DEVICE --out FILE   the device's key, 0600
    vmclient-admin … s3-identity revoke DEVICE             its keys, policy and user gone

``devices revoke`` on an ``s3://`` repository revokes the identity too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store import layout
from ..store.remote import RemoteStore
from ..transport.s3 import S3Credentials, S3Refused, S3Store, S3Unavailable, credentials_text
from . import session

POLICY_NAME = "vmclient-device"


def device_policy(bucket: str, prefix: str, device: str) -> dict[str, Any]:
    """What ``device``'s identity may do in the repository at ``bucket``/``prefix``: read
    ``config``, ``catalog`` and ``images/``; read and list its own directory; write
    (put, delete, abort an upload) only its lock, VMs and reports — not its ``device``
    record nor its orders (the admin's), nothing of another device."""
    root = f"{prefix}/" if prefix else ""
    own = f"{root}{layout.device_dir(device)}/"
    arn = f"arn:aws:s3:::{bucket}/"
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "ReadShared", "Effect": "Allow", "Action": ["s3:GetObject"],
         "Resource": [f"{arn}{root}{layout.CONFIG}", f"{arn}{root}{layout.CATALOG}",
                      f"{arn}{root}images/*", f"{arn}{own}*"]},
        {"Sid": "WriteOwn", "Effect": "Allow",
         "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
         "Resource": [f"{arn}{own}lock", f"{arn}{own}lock.gone/*", f"{arn}{own}vms/*",
                      f"{arn}{own}reports/*"]},
        {"Sid": "ListOwnAndImages", "Effect": "Allow",
         "Action": ["s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}"],
         "Condition": {"StringLike": {"s3:prefix": [f"{own}*", f"{root}images/*"]}}},
    ]}


def user_name(store: S3Store, device: str) -> str:
    """The device's IAM user: its SSH account's name, and the repository's prefix (one
    store may hold several repositories)."""
    tail = store.target.prefix.replace("/", "-")
    return layout.account_name(device) + (f"-{tail}" if tail else "")


def _iam(store: S3Store) -> Any:
    import boto3
    t = store.target
    return boto3.session.Session().client(
        "iam", endpoint_url=t.endpoint, region_name=t.region,
        aws_access_key_id=t.credentials.access_key if t.credentials else None,
        aws_secret_access_key=t.credentials.secret_key if t.credentials else None)


def _call(store: S3Store, op: str, device: str, fn: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError
    try:
        return fn()
    except ClientError as exc:
        raise S3Refused(store.target.server, f"IAM {op}", layout.device_dir(device),
                        exc.response.get("Error", {}).get("Message") or exc) from exc
    except BotoCoreError as exc:
        raise S3Unavailable(f"IAM {op}", layout.device_dir(device), store.target.server, 1,
                            exc) from exc


async def issue(store: S3Store, device: str) -> S3Credentials:
    """A new access key for ``device`` under :func:`device_policy` (its user made if need
    be; an earlier key stays valid until revoked)."""
    name = user_name(store, device)
    policy = json.dumps(device_policy(store.target.bucket, store.target.prefix, device))

    def run() -> S3Credentials:
        iam = _iam(store)
        try:
            users = _call(store, "ListUsers", device, lambda: iam.list_users()["Users"])
            if name not in {u["UserName"] for u in users}:
                _call(store, "CreateUser", device, lambda: iam.create_user(UserName=name))
            _call(store, "PutUserPolicy", device, lambda: iam.put_user_policy(
                UserName=name, PolicyName=POLICY_NAME, PolicyDocument=policy))
            key = _call(store, "CreateAccessKey", device,
                        lambda: iam.create_access_key(UserName=name))["AccessKey"]
            return S3Credentials(str(key["AccessKeyId"]), str(key["SecretAccessKey"]))
        finally:
            iam.close()

    return await asyncio.to_thread(run)


async def revoke(store: S3Store, device: str) -> int:
    """Delete every access key of ``device``'s identity, its policy and its user; how
    many keys were deleted (0: it had none, or no user)."""
    name = user_name(store, device)

    def run() -> int:
        iam = _iam(store)
        try:
            users = _call(store, "ListUsers", device, lambda: iam.list_users()["Users"])
            if name not in {u["UserName"] for u in users}:
                return 0
            keys = _call(store, "ListAccessKeys", device, lambda: iam.list_access_keys(
                UserName=name)["AccessKeyMetadata"])
            for key in keys:
                _call(store, "DeleteAccessKey", device, lambda k=key: iam.delete_access_key(
                    UserName=name, AccessKeyId=k["AccessKeyId"]))
            _call(store, "DeleteUserPolicy", device, lambda: iam.delete_user_policy(
                UserName=name, PolicyName=POLICY_NAME))
            _call(store, "DeleteUser", device, lambda: iam.delete_user(UserName=name))
            return len(keys)
        finally:
            iam.close()

    return await asyncio.to_thread(run)


# --- the command ------------------------------------------------------------------------------

def add_parsers(sub: Any) -> None:
    s = sub.add_parser("s3-identity", help="an s3:// repository: issue or revoke a device's "
                       "own access key (through the store's IAM API)")
    ssub = s.add_subparsers(dest="s3_command", required=True)
    i = ssub.add_parser("issue", help="a new access key reaching only the device's prefix")
    i.add_argument("device", help="device id (32 hex) or enrolled name")
    i.add_argument("--out", type=Path, required=True,
                   help="where to write the key (AWS shared-credentials format, mode 0600): "
                   "the laptop's [repository] s3_credentials file")
    r = ssub.add_parser("revoke", help="delete the device's access keys and identity")
    r.add_argument("device", help="device id (32 hex) or enrolled name")
    s.set_defaults(func=cmd_s3_identity)


def _new_secret_file(path: Path) -> int:
    """``path`` created for writing, mode 0600; refused if it exists (no key is lost)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--out {path} exists: give a new file") from None
    except OSError as exc:
        raise UsageError(f"--out {path}: {exc.strerror or exc}") from exc


def s3_store(args: argparse.Namespace, remote: RemoteStore) -> S3Store:
    if not isinstance(remote, S3Store):
        raise UsageError(f"{args.repo} is not an s3:// repository: device identities are "
                         "the store's (SSH accounts: enrol)")
    return remote


async def cmd_s3_identity(args: argparse.Namespace, remote: RemoteStore) -> None:
    store = s3_store(args, remote)
    k = await session.open_keys(args, remote)
    rec = await session.find_device(remote, k, args.device)
    if args.s3_command == "revoke":
        n = await revoke(store, rec.device)
        print(f"{rec.name} ({rec.device}): {n} access key(s) and the identity "
              f"{user_name(store, rec.device)} deleted", flush=True)
        return
    out: Path = args.out
    fd = _new_secret_file(out)
    try:
        creds = await issue(store, rec.device)
    except BaseException:
        os.close(fd)
        os.unlink(out)
        raise
    with os.fdopen(fd, "w") as f:
        f.write(credentials_text(creds))
    print(f"{rec.name} ({rec.device}): access key {creds.access_key} of "
          f"{user_name(store, rec.device)} written to {out}; install it on the laptop as "
          "its [repository] s3_credentials (mode 0600)", flush=True)
