"""Reading and writing repository documents through a :class:`RemoteStore`.

This is the one code path for images (Receiver) and VM snapshots
(Synchronizer); their chunks go through :class:`~.chunkstore.ChunkStore`.  It
does I/O only through the injected store, applies the write ordering of
repository-format.md (packs, then index, then manifest, then catalog or
pointer) and every check a reader owes (AEAD, signature, digest
pinned by a signed parent, body names the object it was stored as).
"""

from __future__ import annotations

from collections.abc import Mapping

from . import crypto, layout
from .documents import (
    CATALOG_ID,
    CONFIG_ID,
    Catalog,
    Pointer,
    RepoConfig,
    WrappedKey,
    check_catalog_fresh,
    check_pointer_fresh,
    pointer_id,
)
from .errors import RemoteIntegrityError
from .format import decode_payload, encode_payload, open_envelope, signed_envelope
from .objects import Manifest
from .orders import DEVICE_ID_RE, DeviceRecord
from .remote import RemoteStore, get_object

Signers = Mapping[str, crypto.Ed25519PublicKey]


async def put_sealed(remote: RemoteStore, path: str, key: bytes, obj: tuple[str, str],
                     plaintext: bytes, *, exclusive: bool = True) -> bytes:
    """Seal ``plaintext`` as object ``obj`` = (type, id) and store it at ``path``."""
    obj_type, obj_id = obj
    sealed = crypto.seal(key, obj_type, obj_id, encode_payload(plaintext))
    await remote.put_atomic(path, sealed, exclusive=exclusive)
    return sealed


async def get_sealed(remote: RemoteStore, path: str, key: bytes, obj_type: str,
                     obj_id: str, *, digest: str | None = None) -> bytes:
    """Read, check the pinned SHA-256 (if any), decrypt and decompress."""
    untrusted = await get_object(remote, path, obj_type, obj_id)
    if digest is not None and crypto.sha256_hex(untrusted) != digest:
        raise RemoteIntegrityError(obj_type, obj_id, path,
                                   "digest does not match the one its signed parent pins")
    payload = crypto.open_sealed(key, obj_type, obj_id, untrusted, path=path)
    return decode_payload(payload, obj_type, obj_id, path)


async def put_signed(remote: RemoteStore, path: str, key: crypto.Ed25519PrivateKey,
                     obj: tuple[str, str], body: bytes, *, exclusive: bool = True) -> bytes:
    obj_type, obj_id = obj
    blob = signed_envelope(key, obj_type, obj_id, body)
    await remote.put_atomic(path, blob, exclusive=exclusive)
    return blob


async def get_signed(remote: RemoteStore, path: str, signers: Signers, obj_type: str,
                     obj_id: str) -> tuple[str, bytes, bytes]:
    """(signer key id, verified body, raw object bytes)."""
    untrusted = await get_object(remote, path, obj_type, obj_id)
    signer, body = open_envelope(signers, untrusted, obj_type, obj_id, path)
    return signer, body, untrusted


# --- config and catalog ---------------------------------------------------------------------

async def get_config(remote: RemoteStore, admin: crypto.Ed25519PublicKey) -> RepoConfig:
    """``config``, signed by the admin key pinned on this laptop."""
    signers = {crypto.key_id(admin): admin}
    _s, body, _raw = await get_signed(remote, layout.CONFIG, signers, "config", CONFIG_ID)
    cfg = RepoConfig.parse(body, layout.CONFIG)
    if cfg.admin_key != crypto.raw_public(admin):
        raise RemoteIntegrityError("config", CONFIG_ID, layout.CONFIG,
                                   "names another admin key than the pinned one")
    return cfg


async def put_catalog(remote: RemoteStore, admin: crypto.Ed25519PrivateKey,
                      catalog: Catalog) -> str:
    """Replace ``catalog`` (after every manifest it pins is stored); returns its digest."""
    body = catalog.to_bytes()
    await put_signed(remote, layout.CATALOG, admin, ("catalog", CATALOG_ID), body,
                     exclusive=False)
    return crypto.sha256_hex(body)


async def get_catalog(remote: RemoteStore, admin: crypto.Ed25519PublicKey, repository: str, *,
                      known_serial: int = 0, known_digest: str = "") -> tuple[Catalog, str]:
    """The catalog and its digest, refused if older than (or conflicting with) one seen."""
    signers = {crypto.key_id(admin): admin}
    _s, body, _raw = await get_signed(remote, layout.CATALOG, signers, "catalog", CATALOG_ID)
    catalog, digest = Catalog.parse(body, repository, layout.CATALOG), crypto.sha256_hex(body)
    check_catalog_fresh(catalog, digest, known_serial, known_digest, layout.CATALOG)
    return catalog, digest


# --- wrapped keys ----------------------------------------------------------------------------

async def put_wrapped_key(remote: RemoteStore, path: str, signer: crypto.Ed25519PrivateKey,
                          wrapped: WrappedKey) -> None:
    await put_signed(remote, path, signer, ("wrapped-key", wrapped.object_id),
                     wrapped.to_bytes(), exclusive=False)


async def get_wrapped_key(remote: RemoteStore, path: str, signers: Signers, subject: str,
                          recipient: crypto.X25519PrivateKey) -> crypto.KeySet:
    """Unwrap the key of ``subject`` for ``recipient``; only creators in ``signers`` count.

    Public keys are public: an unsigned wrapped key could be one the server made.
    """
    rid = crypto.key_id(recipient.public_key())
    _s, body, _raw = await get_signed(remote, path, signers, "wrapped-key", f"{subject}/{rid}")
    return WrappedKey.parse(body, subject, rid, path).unwrap(recipient, path)


# --- manifests -------------------------------------------------------------------------------

async def put_image_manifest(remote: RemoteStore, keys: crypto.KeySet, m: Manifest) -> str:
    """Store an image version's manifest; returns the digest the catalog must pin."""
    sealed = await put_sealed(remote, layout.image_manifest(m.subject, int(m.label)), keys.enc,
                              ("manifest", m.object_id), m.to_bytes())
    return crypto.sha256_hex(sealed)


async def get_image_manifest(remote: RemoteStore, keys: crypto.KeySet, name: str, version: int,
                             digest: str) -> Manifest:
    path = layout.image_manifest(name, version)
    oid = Manifest("image", name, str(version), 0, 0, "", ()).object_id
    body = await get_sealed(remote, path, keys.enc, "manifest", oid, digest=digest)
    return _checked(Manifest.parse(body, "image", name, str(version), path), keys, path)


async def put_snapshot(remote: RemoteStore, device_key: crypto.Ed25519PrivateKey,
                       keys: crypto.KeySet, m: Manifest) -> str:
    """Seal with the VM's key, sign with the device key; returns the stored digest."""
    sealed = crypto.seal(keys.enc, "manifest", m.object_id, encode_payload(m.to_bytes()))
    blob = await put_signed(remote, layout.vm_snapshot(m.device, m.subject, m.label),
                            device_key, ("snapshot", m.object_id), sealed)
    return crypto.sha256_hex(blob)


async def get_snapshot(remote: RemoteStore, signers: Signers, keys: crypto.KeySet, *,
                       device: str, vm: str, snapshot: str, digest: str | None = None
                       ) -> Manifest:
    """A snapshot stored under ``devices/<device>/vms/<vm>/``.

    ``signers`` are the devices allowed to have written it: the device itself,
    and after a restore the old device a ``rekey`` order names.  The body must
    name the device that signed it.
    """
    path = layout.vm_snapshot(device, vm, snapshot)
    oid = f"snapshot:{vm}/{snapshot}"
    signer, sealed, raw = await get_signed(remote, path, signers, "snapshot", oid)
    if digest is not None and crypto.sha256_hex(raw) != digest:
        raise RemoteIntegrityError("snapshot", oid, path, "digest does not match the pointer's")
    payload = crypto.open_sealed(keys.enc, "manifest", oid, sealed, path=path)
    m = Manifest.parse(decode_payload(payload, "manifest", oid, path), "snapshot", vm,
                       snapshot, path)
    if m.device != signer:
        raise RemoteIntegrityError("snapshot", oid, path,
                                   f"written by {m.device} but signed by {signer}")
    return _checked(m, keys, path)


def _checked(m: Manifest, keys: crypto.KeySet, path: str) -> Manifest:
    if m.key_check != keys.check:
        raise RemoteIntegrityError("manifest", m.object_id, path, "key check does not match")
    return m


async def put_pointer(remote: RemoteStore, device_key: crypto.Ed25519PrivateKey,
                      p: Pointer) -> None:
    await put_signed(remote, layout.vm_pointer(p.device, p.vm), device_key,
                     ("pointer", pointer_id(p.vm)), p.to_bytes(), exclusive=False)


async def get_pointer(remote: RemoteStore, signers: Signers, device: str, vm: str,
                      known_seq: int = 0) -> Pointer:
    """``latest`` of a VM under ``devices/<device>/``, written by one of ``signers``."""
    path = layout.vm_pointer(device, vm)
    signer, body, _raw = await get_signed(remote, path, signers, "pointer", pointer_id(vm))
    p = Pointer.parse(body, vm, signer, path)
    check_pointer_fresh(p, known_seq, path)
    return p


async def load_snapshot(remote: RemoteStore, signers: Signers, keys: crypto.KeySet,
                        device: str, vm: str, snapshot: str | None = None,
                        known_seq: int = 0) -> Manifest:
    """``latest`` (or the named snapshot) of a VM, verified."""
    if snapshot is None:
        p = await get_pointer(remote, signers, device, vm, known_seq)
        return await get_snapshot(remote, signers, keys, device=device, vm=vm,
                                  snapshot=p.snapshot, digest=p.manifest)
    return await get_snapshot(remote, signers, keys, device=device, vm=vm, snapshot=snapshot)


def writers_dir(device: str, vm: str) -> str:
    """Where a re-keyed VM's directory lists its former writers (repository-format.md §8.5)."""
    return f"{layout.vm_dir(device, vm)}/writers"


def writer_record(device: str, vm: str, writer: str) -> str:
    return f"{writers_dir(device, vm)}/{writer}"


async def writers(remote: RemoteStore, admin: crypto.Ed25519PublicKey, device: str,
                  vm: str) -> dict[str, DeviceRecord]:
    """The former writers a re-keyed VM directory lists (admin-signed device records)."""
    out = {}
    by_id = {crypto.key_id(admin): admin}
    for entry in await remote.list(writers_dir(device, vm)):
        untrusted_id = entry.path.rsplit("/", 1)[-1]
        if not DEVICE_ID_RE.fullmatch(untrusted_id):
            raise RemoteIntegrityError("device", untrusted_id, entry.path, "not a device id")
        _s, body, _raw = await get_signed(remote, entry.path, by_id, "device", untrusted_id)
        out[untrusted_id] = DeviceRecord.parse(body, untrusted_id, entry.path)
    return out
