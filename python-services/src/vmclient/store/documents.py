"""Signed repository documents: config, catalog, pointer, wrapped key.

Each is canonical JSON inside a signed envelope (:func:`format.signed_envelope`)
whose signature binds the object type and id.  ``parse`` functions take the
*verified* body plus the name the object was read under, and check that the
body agrees with that name.  Freshness rules (catalog serial, pointer seq) are
pure functions here so that every reader applies the same ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import crypto
from .errors import RemoteIntegrityError
from .format import HEX_ID_RE, NAME_RE, Reader, b64, canonical_json
from .hostformat import CHANNELS, HOST_IMAGE, RELEASE_RE, HostChannel, window_problem

FORMAT_VERSION = 1
CONFIG_ID = "config"
CATALOG_ID = "catalog"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SUBJECT_RE = re.compile(r"^(vm|image):[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True)
class RepoConfig:
    """``config``: what every client checks first (signed by the admin key)."""

    repository: str  # 32 hex digits, random at init
    created: int
    chunk_size: int
    admin_key: bytes  # Ed25519 public, raw
    escrow_key: bytes  # X25519 public, raw
    id_hash: str = "hmac-sha256"
    aead: str = "aes-256-gcm"

    def to_bytes(self) -> bytes:
        return canonical_json({
            "version": FORMAT_VERSION, "repository": self.repository, "created": self.created,
            "chunk_size": self.chunk_size, "id_hash": self.id_hash, "aead": self.aead,
            "admin_key": b64(self.admin_key), "escrow_key": b64(self.escrow_key)})

    @classmethod
    def parse(cls, untrusted_body: bytes, path: str) -> RepoConfig:
        r = Reader.parse(untrusted_body, "config", CONFIG_ID, path)
        r.version({FORMAT_VERSION})
        cfg = cls(repository=r.text("repository", pattern=_KEY_ID_RE),
                  created=r.integer("created", lo=0),
                  chunk_size=r.integer("chunk_size", lo=64 << 10, hi=1 << 20),
                  admin_key=r.b64("admin_key", size=32), escrow_key=r.b64("escrow_key", size=32),
                  id_hash=r.const("id_hash", "hmac-sha256"), aead=r.const("aead", "aes-256-gcm"))
        if cfg.chunk_size & (cfg.chunk_size - 1):
            r.fail("chunk_size", "must be a power of two")
        r.done()
        return cfg


@dataclass(frozen=True)
class ImageVersion:
    version: int
    manifest: str  # SHA-256 (hex) of the sealed manifest object
    size: int  # guest-visible bytes of the system disk
    created: int
    key_check: str


@dataclass(frozen=True)
class HostBundle:
    release: str
    image: ImageVersion  # the chunk tree's version number, manifest pin, size …

    def to_json(self) -> dict[str, Any]:
        return {"release": self.release, **vars(self.image)}


@dataclass(frozen=True)
class HostSection:
    bundles: tuple[HostBundle, ...] = ()
    channels: dict[str, HostChannel] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"bundles": [b.to_json() for b in self.bundles],
                "channels": [{"name": n, "release": c.release, "rollout": c.rollout,
                              **({"maintenance": c.maintenance} if c.maintenance else {})}
                             for n, c in sorted(self.channels.items())]}

    def find(self, release: str) -> HostBundle | None:
        return next((b for b in self.bundles if b.release == release), None)

    def latest(self) -> ImageVersion | None:
        return self.bundles[-1].image if self.bundles else None

    @classmethod
    def parse(cls, r: Reader) -> HostSection:
        bundles: list[HostBundle] = []
        for b in r.tables("bundles"):
            release = b.text("release", pattern=RELEASE_RE)
            image = ImageVersion(b.integer("version", lo=1), b.text("manifest", pattern=HEX_ID_RE),
                                 b.integer("size", lo=0), b.integer("created", lo=0),
                                 b.text("key_check"))
            b.done()
            if any(x.release == release for x in bundles):
                b.fail("release", f"duplicate release {release!r}")
            bundles.append(HostBundle(release, image))
        numbers = [b.image.version for b in bundles]
        if numbers != sorted(set(numbers)):
            r.fail("bundles", "versions not strictly increasing")
        channels: dict[str, HostChannel] = {}
        for c in r.tables("channels"):
            name = c.text("name", choices=CHANNELS)
            release = c.text("release", pattern=RELEASE_RE)
            if name in channels:
                c.fail("name", f"duplicate channel {name!r}")
            if not any(b.release == release for b in bundles):
                c.fail("release", f"{release!r} is not a published bundle")
            maintenance = c.text("maintenance") if "maintenance" in c.names() else ""
            if "maintenance" in c.names() and window_problem(maintenance):
                c.fail("maintenance", f"{maintenance!r}: {window_problem(maintenance)}")
            channels[name] = HostChannel(release, c.integer("rollout", lo=0, hi=100),
                                         maintenance)
            c.done()
        r.done()
        return cls(tuple(bundles), channels)


@dataclass(frozen=True)
class Catalog:
    """``catalog``: the published images, signed by the admin, ``serial`` only grows."""

    repository: str
    serial: int
    issued: int
    images: dict[str, tuple[ImageVersion, ...]]
    host: HostSection | None = None  # host update bundles and channels (hostformat.py)

    def to_bytes(self) -> bytes:
        doc = {
            "version": FORMAT_VERSION, "repository": self.repository, "serial": self.serial,
            "issued": self.issued,
            "images": [{"name": name, "versions": [vars(v) for v in versions]}
                       for name, versions in sorted(self.images.items())]}
        if self.host is not None:  # absent until the first host bundle: older readers
            doc["host"] = self.host.to_json()
        return canonical_json(doc)

    @classmethod
    def parse(cls, untrusted_body: bytes, repository: str, path: str) -> Catalog:
        r = Reader.parse(untrusted_body, "catalog", CATALOG_ID, path)
        r.version({FORMAT_VERSION})
        r.const("repository", repository)
        serial, issued = r.integer("serial", lo=1), r.integer("issued", lo=0)
        images: dict[str, tuple[ImageVersion, ...]] = {}
        for img in r.tables("images"):
            name = img.text("name", pattern=NAME_RE)
            versions = []
            for v in img.tables("versions"):
                versions.append(ImageVersion(
                    v.integer("version", lo=1), v.text("manifest", pattern=HEX_ID_RE),
                    v.integer("size", lo=0), v.integer("created", lo=0), v.text("key_check")))
                v.done()
            numbers = [v.version for v in versions]
            if numbers != sorted(set(numbers)):
                img.fail("versions", "not strictly increasing")
            if name in images:
                img.fail("name", f"duplicate image {name!r}")
            images[name] = tuple(versions)
            img.done()
        host = None
        if "host" in r.names():
            if HOST_IMAGE in images:
                r.fail("images", f"{HOST_IMAGE!r} is reserved for host update bundles")
            host = HostSection.parse(r.table("host"))
        r.done()
        return cls(repository, serial, issued, images, host)

    def find(self, name: str, version: int | None = None) -> ImageVersion | None:
        versions = self.images.get(name, ())
        if version is None:
            return versions[-1] if versions else None
        return next((v for v in versions if v.version == version), None)


def check_catalog_fresh(new: Catalog, new_digest: str, known_serial: int,
                        known_digest: str, path: str) -> None:
    """Refuse a catalog older than one already seen, or a different one of the same serial."""
    if new.serial < known_serial:
        raise RemoteIntegrityError(
            "catalog", CATALOG_ID, path,
            f"serial {new.serial} is older than serial {known_serial} already seen (replayed)")
    if new.serial == known_serial and known_digest and new_digest != known_digest:
        raise RemoteIntegrityError("catalog", CATALOG_ID, path,
                                   f"two different catalogs carry serial {new.serial}")


@dataclass(frozen=True)
class Pointer:
    """``latest`` of a VM: the newest complete snapshot, signed by the device."""

    vm: str
    device: str
    snapshot: str
    seq: int
    time: int
    manifest: str  # SHA-256 (hex) of the stored snapshot object

    def to_bytes(self) -> bytes:
        return canonical_json({"version": FORMAT_VERSION, **vars(self)})

    @classmethod
    def parse(cls, untrusted_body: bytes, vm: str, device: str, path: str) -> Pointer:
        r = Reader.parse(untrusted_body, "pointer", pointer_id(vm), path)
        r.version({FORMAT_VERSION})
        p = cls(r.const("vm", vm), r.const("device", device),
                r.text("snapshot", pattern=NAME_RE), r.integer("seq", lo=1),
                r.integer("time", lo=0), r.text("manifest", pattern=HEX_ID_RE))
        r.done()
        return p


def pointer_id(vm: str) -> str:
    return f"{vm}/latest"


def check_pointer_fresh(new: Pointer, known_seq: int, path: str) -> None:
    if new.seq < known_seq:
        raise RemoteIntegrityError("pointer", pointer_id(new.vm), path,
                                   f"seq {new.seq} is older than seq {known_seq} already written")


@dataclass(frozen=True)
class WrappedKey:
    """A VM data key or image content key, wrapped for one recipient X25519 key."""

    subject: str  # "vm:<id>" or "image:<name>"
    recipient: str  # key id of the recipient's X25519 public key
    key_check: str
    wrapped: bytes

    @property
    def object_id(self) -> str:
        return f"{self.subject}/{self.recipient}"

    @classmethod
    def create(cls, subject: str, recipient: crypto.X25519PublicKey,
               keys: crypto.KeySet) -> WrappedKey:
        blob = crypto.wrap_key(recipient, keys.secret, "data-key", subject)
        return cls(subject, crypto.key_id(recipient), keys.check, blob)

    def unwrap(self, private: crypto.X25519PrivateKey, path: str) -> crypto.KeySet:
        secret = crypto.unwrap_key(private, self.wrapped, "data-key", self.subject, path=path)
        keys = crypto.KeySet.derive(secret)
        if keys.check != self.key_check:
            raise RemoteIntegrityError("wrapped-key", self.object_id, path,
                                       "unwrapped key does not match its key check")
        return keys

    def to_bytes(self) -> bytes:
        return canonical_json({"version": FORMAT_VERSION, "subject": self.subject,
                               "recipient": self.recipient, "key_check": self.key_check,
                               "wrapped": b64(self.wrapped)})

    @classmethod
    def parse(cls, untrusted_body: bytes, subject: str, recipient: str, path: str) -> WrappedKey:
        r = Reader.parse(untrusted_body, "wrapped-key", f"{subject}/{recipient}", path)
        r.version({FORMAT_VERSION})
        w = cls(r.const("subject", subject), r.const("recipient", recipient),
                r.text("key_check"), r.b64("wrapped", size=crypto.WRAP_OVERHEAD + crypto.KEY_SIZE))
        r.done()
        if not _SUBJECT_RE.fullmatch(subject):
            r.fail("subject", f"{subject!r} is not vm:<id> or image:<name>")
        return w
