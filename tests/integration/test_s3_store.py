"""The S3 RemoteStore against a real SeaweedFS on 127.0.0.1 (fixtures_s3.py): the
guarantees of repository-format.md §8.1/§10/§11 restated for S3, and the confinement of a
device's credentials to its own prefix."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fixtures_s3 import BUCKET, SeaweedFS, free_ports

from vmclient.admin import s3iam
from vmclient.store import layout, repo
from vmclient.store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from vmclient.store.locks import Whoami, lock_document
from vmclient.store.remote import MAX_OBJECT, get_object
from vmclient.transport import open_store
from vmclient.transport.s3 import S3Refused, S3Store, S3Unavailable
from vmclient.transport.s3_conditions import CONDITIONS

MiB = 1 << 20
DEV_A, DEV_B = "a" * 32, "b" * 32


@contextlib.asynccontextmanager
async def closing(*stores: S3Store) -> AsyncIterator[None]:
    """The block, then every store closed (its client and threads)."""
    try:
        yield
    finally:
        for store in stores:
            await store.close()


def incomplete_uploads(s3: SeaweedFS, prefix: str) -> list[str]:
    store = s3.store(s3.admin, "")
    ups = store.client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix + "/")
    store.client.close()
    return [u["Key"] for u in ups.get("Uploads", ())]


@pytest.mark.asyncio
async def test_put_get_list_delete_round_trip_and_exclusive_create(seaweedfs: SeaweedFS) -> None:
    prefix = seaweedfs.prefix()
    store = seaweedfs.store(seaweedfs.admin, prefix)

    async with closing(store):
        data = os.urandom(3 * MiB + 17)
        await store.put_atomic("images/t/store/packs/ab/obj", data, exclusive=True)
        assert await store.get("images/t/store/packs/ab/obj") == data
        assert await store.get("images/t/store/packs/ab/obj", MiB - 5, 10) == data[MiB - 5:MiB + 5]
        assert await store.get("images/t/store/packs/ab/obj", len(data) - 2, 10) == data[-2:]
        assert await store.get("images/t/store/packs/ab/obj", len(data), 10) == b""
        with pytest.raises(LocalSyncError, match="exists"):
            await store.put_atomic("images/t/store/packs/ab/obj", b"other", exclusive=True)
        with pytest.raises(LocalSyncError, match="exists"):  # the same bytes: exists too
            await store.put_atomic("images/t/store/packs/ab/obj", data, exclusive=True)
        await store.put_atomic("images/t/store/packs/ab/obj", b"replaced")
        assert await store.get("images/t/store/packs/ab/obj") == b"replaced"
        assert [(e.path, e.size) for e in await store.list("images/t")] == [
            ("images/t/store/packs/ab/obj", 8)]
        await store.delete("images/t/store/packs/ab/obj")
        await store.delete("images/t/store/packs/ab/obj")  # absent: not an error
        with pytest.raises(ObjectNotFound):
            await store.get("images/t/store/packs/ab/obj")
        assert await store.list("nothing/here") == []
        assert await store.probe_conditions("images/t/probe") == {
            c.name: True for c in CONDITIONS}  # SeaweedFS honours every condition
        await store.check_conditions("images/t/probe")
        assert incomplete_uploads(seaweedfs, prefix) == []  # the probe's upload aborted
        token = await store.lock("images/t/lock", "test")
        await store.unlock(token)
        assert await store.list("images/t") == []


@pytest.mark.asyncio
async def test_concurrent_exclusive_creates_admit_exactly_one(seaweedfs: SeaweedFS) -> None:
    """If-None-Match: * is a real compare-and-set on SeaweedFS: of 8 writers racing to
    create one key, one wins and its bytes are the object's."""
    store = seaweedfs.store(seaweedfs.admin, seaweedfs.prefix(), connections=8)

    async with closing(store):
        for rnd in range(3):
            path = f"race/{rnd}"
            outcome = await asyncio.gather(
                *(store.put_atomic(path, bytes([i]) * 1000, exclusive=True) for i in range(8)),
                return_exceptions=True)
            won = [i for i, o in enumerate(outcome) if o is None]
            assert len(won) == 1, outcome
            assert all(isinstance(o, LocalSyncError) for o in outcome if o is not None)
            assert await store.get(path) == bytes(won) * 1000


@pytest.mark.asyncio
async def test_a_large_object_goes_up_in_parts_and_exclusively(seaweedfs: SeaweedFS) -> None:
    prefix = seaweedfs.prefix()
    store = seaweedfs.store(seaweedfs.admin, prefix, multipart_threshold=6 * MiB,
                            part_size=5 * MiB)

    async with closing(store):
        data = os.urandom(11 * MiB + 3)
        await store.put_atomic("images/big/pack", data, exclusive=True)
        assert store.multipart_uploads == 1
        assert await store.get("images/big/pack") == data
        with pytest.raises(LocalSyncError, match="exists"):
            await store.put_atomic("images/big/pack", os.urandom(7 * MiB), exclusive=True)
        assert await store.get("images/big/pack", 10 * MiB, 5) == data[10 * MiB:10 * MiB + 5]
        assert incomplete_uploads(seaweedfs, prefix) == []  # the refused one was aborted


@pytest.mark.asyncio
async def test_an_upload_cut_short_is_invisible_and_swept_by_the_locked_run(
        seaweedfs: SeaweedFS) -> None:
    """A run killed mid-upload leaves an incomplete multipart upload (the S3 form of a
    ``.tmp-*`` file): no reader sees it; a sweep under the lock aborts it, an unlocked one
    leaves a fresh one; a lock's sweep leaves another object's."""
    prefix = seaweedfs.prefix()
    store = seaweedfs.store(seaweedfs.admin, prefix)
    key = f"{prefix}/devices/{DEV_A}/vms/v/store/packs/ab/abcd"
    store.client.create_multipart_upload(Bucket=BUCKET, Key=key)
    store.client.upload_part(Bucket=BUCKET, Key=key, PartNumber=1, Body=b"x" * MiB,
                             UploadId=incomplete_upload_id(store, key))

    async with closing(store):
        assert await store.list(f"devices/{DEV_A}") == []
        with pytest.raises(ObjectNotFound):
            await store.get(f"devices/{DEV_A}/vms/v/store/packs/ab/abcd")
        assert await store.sweep_temporaries(f"devices/{DEV_A}", older_than=3600) == 0
        assert await store.sweep_temporaries(f"devices/{DEV_A}", older_than=None,
                                             names=".tmp-lock-") == 0
        assert await store.sweep_temporaries(f"devices/{DEV_A}", older_than=None,
                                             recursive=False) == 0
        assert await store.sweep_temporaries(f"devices/{DEV_A}", older_than=None) == 1
        assert incomplete_uploads(seaweedfs, prefix) == []
        with pytest.raises(LocalSyncError, match="not a prefix of temporary"):
            await store.sweep_temporaries("devices", names="lock")


def incomplete_upload_id(store: S3Store, key: str) -> str:
    ups = store.client.list_multipart_uploads(Bucket=BUCKET, Prefix=key)["Uploads"]
    return str(ups[0]["UploadId"])


@pytest.mark.asyncio
async def test_rename_is_a_conditional_move_and_a_stale_lock_is_broken(
        seaweedfs: SeaweedFS) -> None:
    """rename fails onto an existing name and from a missing one, and does not move an
    object that changed since it was read (the copy is conditional on its ETag); a stale
    lock is broken by compare-and-delete and nothing set aside is left."""
    store = seaweedfs.store(seaweedfs.admin, seaweedfs.prefix())

    async with closing(store):
        await store.put_atomic("images/t/a", b"1")
        await store.put_atomic("images/t/b", b"2")
        with pytest.raises(LocalSyncError, match="exists"):
            await store.rename("images/t/a", "images/t/b")
        await store.rename("images/t/a", "images/t/c")
        with pytest.raises(ObjectNotFound):
            await store.rename("images/t/a", "images/t/d")
        read = store.etag_of  # (made to change the object after the read)

        def changed_after_read(key: str) -> str | None:
            etag = read(key)
            if key.endswith("/images/t/c"):
                store.client.put_object(Bucket=BUCKET, Key=key, Body=b"a fresh lock")
            return etag

        store.etag_of = changed_after_read  # type: ignore[method-assign]
        with pytest.raises(ObjectNotFound):
            await store.rename("images/t/c", "images/t/e")
        store.etag_of = read  # type: ignore[method-assign]
        assert [e.path for e in await store.list("images/t")] == ["images/t/b", "images/t/c"]
        assert await store.get("images/t/c") == b"a fresh lock"
        await store.put_atomic("images/t/lock", lock_document("crashed", 0, "00"))
        token = await store.lock("images/t/lock", "test")
        await store.unlock(token)
        assert [e.path for e in await store.list("images/t")] == ["images/t/b", "images/t/c"]


@pytest.mark.asyncio
async def test_an_oversize_object_is_refused_after_the_cap_and_a_byte(seaweedfs: SeaweedFS) -> None:
    store = seaweedfs.store(seaweedfs.admin, seaweedfs.prefix())
    path = layout.order(DEV_A, 1)
    cap = MAX_OBJECT["order"]

    async with closing(store):
        await store.put_atomic(path, os.urandom(cap + MiB))
        with pytest.raises(RemoteIntegrityError, match=f"larger than the {cap} bytes"):
            await get_object(store, path, "order", "1")
        assert len(await store.get(path, 0, cap + 1)) == cap + 1


@pytest.mark.asyncio
async def test_a_device_reaches_only_its_own_prefix_and_cannot_write_the_catalog(
        seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Device A's identity (what ``vmclient-admin s3-identity issue`` makes: the policy of
    s3iam.device_policy, through the store's IAM API) cannot read,
    list or delete device B's objects, write the catalog, its own ``device`` record or
    orders; it reads the catalog and images and writes its lock and VMs.  Revoked, its
    key is refused at once."""
    prefix = seaweedfs.prefix()
    admin = seaweedfs.store(seaweedfs.admin, prefix)
    creds_a = await seaweedfs.issue(prefix, DEV_A)
    creds_file = seaweedfs.credentials_file(creds_a, tmp_path / "s3-credentials")
    a = open_store(seaweedfs.url(prefix), s3_credentials=creds_file)
    assert isinstance(a, S3Store)
    b_obj = f"{layout.vm_dir(DEV_B, 'v')}/latest"

    async with closing(a, admin):
        for path in (b_obj, layout.CATALOG, "images/office/versions/1/manifest",
                     layout.device_record(DEV_A), layout.order(DEV_A, 1)):
            await admin.put_atomic(path, b"admin's " + path.encode())
        assert await a.get(layout.CATALOG) == b"admin's catalog"
        assert [e.path for e in await a.list("images")] == ["images/office/versions/1/manifest"]
        await a.put_atomic(f"{layout.vm_dir(DEV_A, 'v')}/latest", b"mine", exclusive=True)
        token = await a.lock(layout.device_lock(DEV_A), "sync")
        await a.unlock(token)
        assert [e.path for e in await a.list(layout.device_dir(DEV_A))] == [
            layout.device_record(DEV_A), layout.order(DEV_A, 1),
            f"{layout.vm_dir(DEV_A, 'v')}/latest"]
        refused = [
            a.get(b_obj), a.list(layout.device_dir(DEV_B)), a.list("devices"),
            a.delete(b_obj), a.put_atomic(f"{layout.vm_dir(DEV_B, 'v')}/x", b"evil"),
            a.put_atomic(layout.CATALOG, b"evil"), a.put_atomic(layout.CONFIG, b"evil"),
            a.put_atomic("images/office/versions/2/manifest", b"evil", exclusive=True),
            a.put_atomic(layout.device_record(DEV_A), b"evil"),
            a.delete(layout.device_record(DEV_A)),
            a.put_atomic(layout.order(DEV_A, 2), b"evil", exclusive=True)]
        for attempt in refused:
            with pytest.raises(S3Refused, match="access denied"):
                await attempt
        for path in (b_obj, layout.CATALOG, layout.device_record(DEV_A)):
            assert await admin.get(path) == b"admin's " + path.encode()
        with pytest.raises(ObjectNotFound):
            await admin.get(layout.order(DEV_A, 2))
        assert await s3iam.revoke(admin, DEV_A) == 1
        with pytest.raises(S3Refused, match="access denied"):
            await a.get(layout.CATALOG)


@pytest.mark.asyncio
async def test_a_store_that_is_down_gives_an_error_naming_endpoint_path_and_operation(
        seaweedfs: SeaweedFS) -> None:
    [port] = free_ports(1)
    store = S3Store(dataclasses.replace(seaweedfs.target(seaweedfs.admin, "p"), attempts=2,
                                        endpoint=f"http://127.0.0.1:{port}", timeout=2))
    async with closing(store):
        with pytest.raises(S3Unavailable) as exc:
            await store.get("devices/x/lock")
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "devices/x/lock" in msg and "get" in msg, msg


@pytest.mark.asyncio
async def test_a_key_the_store_does_not_know_is_refused(seaweedfs: SeaweedFS) -> None:
    from vmclient.transport.s3 import S3Credentials
    store = seaweedfs.store(S3Credentials("NOSUCHKEY", "x" * 40), seaweedfs.prefix())
    async with closing(store):
        with pytest.raises(S3Refused, match=r"access denied \(InvalidAccessKeyId"):
            await store.get(layout.CATALOG)


@pytest.mark.asyncio
async def test_a_signed_object_swapped_on_the_store_is_refused(seaweedfs: SeaweedFS) -> None:
    """The store holds only what the repository signs: one device's signed object copied
    over another path by the store's operator is refused, naming the path."""
    from vmclient.store import crypto
    store = seaweedfs.store(seaweedfs.admin, seaweedfs.prefix())
    admin = crypto.Ed25519PrivateKey.generate()
    signers = {crypto.key_id(admin.public_key()): admin.public_key()}

    async with closing(store):
        await repo.put_signed(store, layout.order(DEV_A, 1), admin, ("order", f"{DEV_A}/1"),
                              b'{"a": 1}')
        await repo.put_signed(store, layout.order(DEV_B, 1), admin, ("order", f"{DEV_B}/1"),
                              b'{"b": 1}')
        store.client.copy_object(Bucket=BUCKET, Key=store.target.key(layout.order(DEV_B, 1)),
                                 CopySource={"Bucket": BUCKET,
                                             "Key": store.target.key(layout.order(DEV_A, 1))})
        with pytest.raises(RemoteIntegrityError) as exc:
            await repo.get_signed(store, layout.order(DEV_B, 1), signers, "order", f"{DEV_B}/1")
        assert exc.value.path == layout.order(DEV_B, 1)



@pytest.mark.asyncio
async def test_the_admin_tool_inits_publishes_and_checks_a_repository_on_s3(
        seaweedfs: SeaweedFS, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``vmclient-admin --repo s3://…?endpoint=… --s3-credentials FILE``: init probes the
    store's If-None-Match and leaves no probe behind; publish and check run over S3, and
    check names a pack whose byte the store's operator flipped."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    from sftp_repo import make_disk

    from vmclient.admin.main import main as admin_main
    from vmclient.store import crypto

    def b64(key: object) -> str:
        import base64
        return base64.b64encode(crypto.raw_public(key)).decode()  # type: ignore[arg-type]

    prefix = seaweedfs.prefix()
    creds = seaweedfs.credentials_file(seaweedfs.admin, tmp_path / "admin-s3")
    base = ["--repo", seaweedfs.url(prefix), "--s3-credentials", str(creds),
            "--key-dir", str(tmp_path / "keys")]

    async def admin(*argv: str) -> int:  # (its main runs an event loop of its own)
        return await asyncio.to_thread(admin_main, [*base, *argv])

    assert await admin("init", "--no-passphrase") == 0
    assert await admin("publish", "office", str(make_disk(tmp_path / "d.raw", 8))) == 0
    assert await admin("check") == 0
    store = seaweedfs.store(seaweedfs.admin, prefix)
    paths = [e.path for e in await store.list("images")]
    assert "images/office/versions/1/manifest" in paths
    assert not [p for p in await root_objects(store) if "probe" in p]
    pack = next(p for p in paths if "/packs/" in p)
    raw = store.client.get_object(Bucket=BUCKET, Key=store.target.key(pack))["Body"].read()
    store.client.put_object(Bucket=BUCKET, Key=store.target.key(pack),
                            Body=raw[:100] + bytes([raw[100] ^ 1]) + raw[101:])
    await store.close()
    capsys.readouterr()
    assert await admin("check", "--read-data") != 0
    out = capsys.readouterr()
    assert pack.split("/")[-1] in out.out + out.err, out
    # a device enrolled on an S3 repository gets its own key, and loses it when revoked
    signing, wrapping = crypto.Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    ssh = signing.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    assert await admin("enrol", "laptop-1", "--pubkey", b64(signing.public_key()),
                       "--wrapping-key", b64(wrapping.public_key()), "--ssh-key-pub", ssh) == 0
    device = crypto.key_id(signing.public_key())
    assert await admin("s3-identity", "issue", "laptop-1", "--out",
                       str(tmp_path / "dev-creds")) == 0
    assert (tmp_path / "dev-creds").stat().st_mode & 0o777 == 0o600
    assert await admin("s3-identity", "issue", "laptop-1", "--out",
                       str(tmp_path / "dev-creds")) != 0  # never overwrites a key
    dev = open_store(seaweedfs.url(prefix), s3_credentials=tmp_path / "dev-creds")
    assert await dev.get(layout.CATALOG)
    assert await admin("devices", "revoke", "laptop-1", "--force") == 0
    with pytest.raises(S3Refused):
        await dev.get(layout.CATALOG)
    await dev.close()  # type: ignore[attr-defined]
    assert device in capsys.readouterr().out
    creds.chmod(0o644)
    assert await admin("list") != 0  # a secret others can read is refused


async def root_objects(store: S3Store) -> list[str]:
    """Every key of the repository, as the store lists them (S3Store.list needs a prefix)."""
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=store.target.key(""))
    return [o["Key"] for page in pages for o in page.get("Contents", ())]


@pytest.mark.asyncio
async def test_locks_expire_and_the_throttled_upload_store_refreshes_and_breaks_them(
        seaweedfs: SeaweedFS) -> None:
    """A lock on S3 has the format's expiry (§10): another host's lock refreshed 29
    minutes ago holds, one 31 minutes old is broken; the sync daemon's upload throttle
    (the same wrapper as over SFTP) passes lock, refresh and break on to the S3 store."""
    import time

    from vmclient.store.errors import LockHeld
    from vmclient.store.holding import break_lock, refresh_lock
    from vmclient.sync.throttle import Throttled
    store = seaweedfs.store(seaweedfs.admin, seaweedfs.prefix())
    other = Whoami("another-host", "m" * 32, "b", 1)
    lock = layout.device_lock(DEV_A)
    now = int(time.time())

    async with closing(store):
        throttled = Throttled(store, 50 << 20)
        await store.put_atomic(lock, lock_document("other", now - 29 * 60, "01", me=other))
        with pytest.raises(LockHeld, match="held by other"):
            await throttled.lock(lock, "sync")
        await store.put_atomic(lock, lock_document("other", now - 31 * 60, "02", me=other))
        token = await throttled.lock(lock, "sync")
        assert await refresh_lock(throttled, token)
        await store.put_atomic(lock, lock_document("admin", now, "03", me=other))
        assert not await refresh_lock(throttled, token)  # not ours any more: not rewritten
        assert (await break_lock(throttled, lock)).holder == "admin"  # type: ignore[union-attr]
        assert await store.list(layout.device_dir(DEV_A)) == []
