"""A published repository behind the real sshd: images, an enrolled device, its keys.

Everything goes through the real tools: the image is made by ``qemu-img``,
published and assigned with ``vmclient-admin`` (its ``main()``), the device
confined with the sshd configuration ``enrol`` prints.  The same on S3
(:class:`S3Repo`, fixtures_s3.py): the device confined by the identity
``vmclient-admin s3-identity issue`` gives it.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fixtures_s3 import SeaweedFS
from fixtures_sshd import Account, SSHServer
from operator_env import Operator

from testlib import need, run
from vmclient.admin import keys as admin_keys
from vmclient.admin.main import main as admin_main
from vmclient.store import crypto
from vmclient.store.remote import RemoteStore
from vmclient.transport import open_store

MiB = 1 << 20


@dataclass
class Device:
    name: str
    signing: Ed25519PrivateKey
    wrapping: X25519PrivateKey
    account: Account | None  # over SFTP
    s3_credentials: Path | None = None  # on S3

    @property
    def id(self) -> str:
        return crypto.key_id(self.signing.public_key())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def make_disk(path: Path, mib: int, seed: int = 1, fill: float = 0.5) -> Path:
    """A sparse raw disk: ``fill`` of its MiB runs hold random or text data, the rest zeros."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(mib * MiB)
        for i in range(mib):
            if rng.random() < fill:
                f.seek(i * MiB)
                f.write(os.urandom(MiB) if i % 2 else ((b"vmclient %d " % i) * MiB)[:MiB])
    return path


def qcow2(raw: Path) -> Path:
    need(shutil.which("qemu-img") is not None, "qemu-img is not installed")
    out = raw.with_suffix(".qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out], check=True)
    return out


class Repo:
    """The admin's view (local path on the server host, the admin's key dir) + devices."""

    def __init__(self, server: SSHServer, work: Path) -> None:
        self.server, self.work = server, work
        self.key_dir = work / "admin-keys"
        self.path = server.repo

    def admin(self, *argv: str) -> int:
        return admin_main(["--repo", str(self.path), "--key-dir", str(self.key_dir), *argv])

    def admin_sftp(self, *argv: str) -> int:
        url = f"sftp://root@127.0.0.1:{self.server.port}{self.path}"
        return admin_main(["--repo", url, "--key-dir", str(self.key_dir), "--ssh-key",
                           str(self.server.admin.key_file), "--known-hosts",
                           str(self.server.known_hosts), *argv])

    @property
    def admin_public(self) -> crypto.Ed25519PublicKey:
        return admin_keys.load(self.key_dir).admin.public_key()

    @property
    def operator(self) -> Operator:
        return Operator(self.path)

    def store(self, dev: Device, **kw: object) -> RemoteStore:
        """The device's store (over SFTP as its confined account)."""
        assert dev.account is not None
        return self.server.store(dev.account, **kw)  # type: ignore[arg-type]

    def enrol(self, name: str) -> Device:
        signing, wrapping = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        device_id = crypto.key_id(signing.public_key())
        account = self.server.add_device(device_id)
        rc = self.admin("enrol", name, "--pubkey", b64(crypto.raw_public(signing.public_key())),
                        "--wrapping-key", b64(crypto.raw_public(wrapping.public_key())),
                        "--ssh-key-pub", account.public, "--server-keys", str(self.server.keys))
        assert rc == 0
        return Device(name, signing, wrapping, account)


class S3Repo:
    """A :class:`Repo` on S3: the admin through its own credentials, in a prefix of its
    own of the shared bucket; each device with the key ``s3-identity issue`` gives it."""

    def __init__(self, s3: SeaweedFS, work: Path) -> None:
        self.s3, self.work = s3, work
        self.key_dir = work / "admin-keys"
        self.url = s3.url(s3.prefix())
        self.creds = s3.credentials_file(s3.admin, work / "admin-s3-credentials")

    def admin(self, *argv: str) -> int:
        return admin_main(["--repo", self.url, "--s3-credentials", str(self.creds),
                           "--key-dir", str(self.key_dir), *argv])

    @property
    def admin_public(self) -> crypto.Ed25519PublicKey:
        return admin_keys.load(self.key_dir).admin.public_key()

    @property
    def operator(self) -> Operator:
        store = open_store(self.url, s3_credentials=self.creds)
        return Operator(None, store)  # type: ignore[arg-type]

    def store(self, dev: Device, **kw: object) -> RemoteStore:
        return open_store(self.url, s3_credentials=dev.s3_credentials)

    def enrol(self, name: str) -> Device:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        signing, wrapping = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
        ssh = signing.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        assert self.admin("enrol", name, "--pubkey", b64(crypto.raw_public(
            signing.public_key())), "--wrapping-key", b64(crypto.raw_public(
                wrapping.public_key())), "--ssh-key-pub", ssh.decode()) == 0
        creds = self.work / f"{name}-s3-credentials"
        assert self.admin("s3-identity", "issue", name, "--out", str(creds)) == 0
        return Device(name, signing, wrapping, None, creds)


def published(server: SSHServer | SeaweedFS, work: Path, mib: int = 64,
              name: str = "office") -> tuple[Repo | S3Repo, Path]:
    """A repository with ``name`` v1 published from a qcow2; returns it and the raw disk."""
    repo = Repo(server, work) if isinstance(server, SSHServer) else S3Repo(server, work)
    assert repo.admin("init") == 0
    raw = make_disk(work / "disk.raw", mib)
    assert repo.admin("publish", name, str(qcow2(raw))) == 0
    return repo, raw
