"""The SFTP RemoteStore against a real OpenSSH sshd on 127.0.0.1 (fixtures_sshd.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import posixpath
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_s3 import SeaweedFS
from fixtures_sshd import SSHServer
from sftp_repo import Device, Repo, S3Repo, make_disk, published, qcow2

import testlib
from testlib import need
from vmclient.admin.images import read_published
from vmclient.store.errors import LocalSyncError, ObjectNotFound, RemoteIntegrityError
from vmclient.store.locks import Whoami, lock_document
from vmclient.store.remote import RemoteStore
from vmclient.transport.sftp import RemoteRefused, RemoteUnavailable, SFTPStore
from vmclient.transport.sftp_client import Connection
from vmclient.transport.sftp_codec import READ_FLAG

MiB = 1 << 20


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _closing(store: SFTPStore, coro):  # type: ignore[no-untyped-def]
    try:
        return await coro
    finally:
        await store.close()


def device_download(repo: Repo | S3Repo, dev: Device, out: Path, **kw: object
                    ) -> tuple[RemoteStore, int]:
    store = repo.store(dev)
    _m, fetched = run(_closing(store, read_published(store, repo.admin_public, dev.wrapping,
                                                     "office", out, **kw)))  # type: ignore[arg-type]
    return store, fetched.chunks


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_first_connection_sets_the_others_opening(sshd: SSHServer) -> None:
    """The handshakes of the other connections overlap the first requests, not the
    first transfer that needs them (a refused key is tried once: see below)."""
    store = sshd.store(sshd.admin, connections=3)
    try:
        run(store.check())  # one request, on one connection
        deadline = time.monotonic() + 10
        while len(store.pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(store.pids()) == 3
    finally:
        run(store.close())


def test_put_get_list_delete_round_trip_and_exclusive_create(sshd: SSHServer) -> None:
    store = sshd.store(sshd.admin)

    async def scenario() -> None:
        data = os.urandom(3 * MiB + 17)
        await store.put_atomic("images/t/store/packs/ab/obj", data, exclusive=True)
        assert await store.get("images/t/store/packs/ab/obj") == data
        assert await store.get("images/t/store/packs/ab/obj", MiB - 5, 10) == data[MiB - 5:MiB + 5]
        with pytest.raises(LocalSyncError, match="exists"):
            await store.put_atomic("images/t/store/packs/ab/obj", b"other", exclusive=True)
        await store.put_atomic("images/t/store/packs/ab/obj", b"replaced")
        assert await store.get("images/t/store/packs/ab/obj") == b"replaced"
        assert [e.path for e in await store.list("images/t")] == ["images/t/store/packs/ab/obj"]
        assert not [p for p in (sshd.repo / "images/t/store/packs/ab").iterdir()
                    if p.name.startswith(".")], "no temporary file is left behind"
        await store.delete("images/t/store/packs/ab/obj")
        await store.delete("images/t/store/packs/ab/obj")  # absent: not an error
        with pytest.raises(ObjectNotFound):
            await store.get("images/t/store/packs/ab/obj")
        assert await store.list("nothing/here") == []
        token = await store.lock("images/t/lock", "test")
        await store.unlock(token)

    run(_closing(store, scenario()))


def test_rename_stale_lock_break_and_sweep_over_sftp(sshd: SSHServer) -> None:
    """rename fails onto an existing name and from a missing one; a stale lock is broken by
    compare-and-delete (nothing set aside is left); the locked run's sweep removes
    every temporary file."""
    store = sshd.store(sshd.admin)
    lock = "images/t/lock"

    async def scenario() -> None:
        await store.put_atomic("images/t/a", b"1")
        await store.put_atomic("images/t/b", b"2")
        with pytest.raises(LocalSyncError, match="exists"):
            await store.rename("images/t/a", "images/t/b")
        await store.rename("images/t/a", "images/t/c")
        with pytest.raises(ObjectNotFound):
            await store.rename("images/t/a", "images/t/d")
        await store.put_atomic(lock, b'{"holder": "crashed", "created": 0, "nonce": "00"}')
        token = await store.lock(lock, "test")
        await store.unlock(token)
        assert sorted(p.name for p in (sshd.repo / "images/t").iterdir()) == [
            "b", "c", "lock.gone"]
        assert list((sshd.repo / "images/t/lock.gone").iterdir()) == []
        (sshd.repo / "images/t/store/packs/ab").mkdir(parents=True)
        for d in ("images/t", "images/t/store/packs/ab"):
            (sshd.repo / d / ".tmp-killed").write_bytes(b"half an upload")
        assert await store.sweep_temporaries("images/t", older_than=3600) == 0  # fresh ones
        assert await store.sweep_temporaries("images/t", older_than=None) == 2
        assert not list(sshd.repo.glob("images/t/**/.tmp-*"))

    run(_closing(store, scenario()))


def test_taking_a_lock_over_sftp_removes_what_killed_lock_operations_left(sshd: SSHServer
                                                                         ) -> None:
    """A run killed while writing the lock left ``.tmp-lock-*`` beside it, one killed while
    unlocking the lock set aside in ``lock.gone/``: the next holder removes those, not the
    other temporaries of that directory (another writer's); an unlock whose set-aside
    directory does not exist yet makes it."""
    store = sshd.store(sshd.admin)
    d = sshd.repo / "images/l"

    async def scenario() -> None:
        await store.put_atomic("images/l/catalog", b"1")
        names = [".tmp-lock-0123456789abcdef", ".tmp-catalog-0123456789abcdef"]
        for name in names:
            (d / name).write_bytes(b"half")
        (d / "lock.gone").mkdir()  # and a lock set aside by a client killed while unlocking
        (d / "lock.gone" / "0123456789abcdef").write_bytes(
            lock_document("killed", 0, "dead", me=Whoami("h", "m", "b", 1)))
        token = await store.lock("images/l/lock", "test")
        assert sorted(p.name for p in d.glob(".tmp-*")) == names[1:]
        assert list((d / "lock.gone").iterdir()) == []
        await store.unlock(token)
        assert [e.path for e in await store.list("images/l")] == ["images/l/catalog"]
        with pytest.raises(LocalSyncError, match="not a prefix of temporary"):
            await store.sweep_temporaries("images/l", names="lock")

    run(_closing(store, scenario()))


def test_a_device_cannot_read_or_list_another_devices_directory(sshd: SSHServer,
                                                                tmp_path: Path) -> None:
    repo, _raw = published(sshd, tmp_path, mib=4)
    alice, bob = repo.enrol("alice"), repo.enrol("bob")
    store = sshd.store(alice.account)

    async def scenario() -> None:
        await store.put_atomic(f"devices/{alice.id}/vms/a/latest", b"mine")
        assert await store.get(f"devices/{alice.id}/device")  # readable, written by the admin
        assert await store.list("images/office")  # public images are readable
        with pytest.raises((RemoteRefused, ObjectNotFound)):
            await store.get(f"devices/{bob.id}/device")
        with pytest.raises((RemoteRefused, ObjectNotFound)):
            await store.put_atomic(f"devices/{bob.id}/vms/x/latest", b"forged")
        with pytest.raises(RemoteRefused):
            await store.list(f"devices/{bob.id}")
        with pytest.raises(RemoteRefused):  # 0711: device ids are not enumerable
            await store.list("devices")
        with pytest.raises(RemoteRefused):  # root wrote it; the sticky bit protects it
            await store.delete(f"devices/{alice.id}/device")
        with pytest.raises((RemoteRefused, ObjectNotFound)):
            await store.put_atomic("catalog", b"forged")

    run(_closing(store, scenario()))
    assert not (sshd.repo / "devices" / bob.id / "vms").exists()
    assert (sshd.repo / "devices" / alice.id / "device").exists()


def test_a_user_less_url_logs_in_as_the_devices_account_from_its_state(
        sshd: SSHServer, tmp_path: Path) -> None:
    """``sftp://host/`` (what a laptop ships) with the laptop's rule: no login before the
    device id is in the management state ("not enrolled yet"), then the device's own
    account; enrolled again under a new id (a new SSH key at the same path), the next
    request logs in as the new account, not through the old account's connection."""
    from vmclient.host.lease import DeviceState, NotEnrolled, StateFile, device_account
    from vmclient.transport import open_store

    repo, _raw = published(sshd, tmp_path, mib=4)
    alice, bob = repo.enrol("alice"), repo.enrol("bob")
    manage, key = tmp_path / "manage", tmp_path / "ssh_ed25519"
    store = open_store(f"sftp://127.0.0.1:{sshd.port}/", key_file=key,
                       known_hosts=sshd.known_hosts, connections=1,
                       account=device_account(manage, "the test datacenter"))

    async def scenario() -> None:
        with pytest.raises(NotEnrolled, match="test datacenter"):
            await store.get(f"devices/{alice.id}/device")
        StateFile(manage).save(DeviceState(device=alice.id))
        key.write_bytes(alice.account.key_file.read_bytes())
        key.chmod(0o600)
        assert await store.get(f"devices/{alice.id}/device")
        StateFile(manage).save(DeviceState(device=bob.id))  # wiped, enrolled again
        key.write_bytes(bob.account.key_file.read_bytes())
        assert await store.get(f"devices/{bob.id}/device")
        with pytest.raises((RemoteRefused, ObjectNotFound)):  # alice's is not reachable now
            await store.get(f"devices/{alice.id}/device")

    run(_closing(store, scenario()))  # type: ignore[arg-type]


def test_unpinned_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    other = tmp_path / "known_hosts"
    pub = Path(f"{sshd.client / 'admin'}.pub").read_text().split()  # a key that is not the host's
    other.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    store = SFTPStore(dataclasses.replace(sshd.store(sshd.admin).target, known_hosts=other))
    with pytest.raises(RemoteRefused, match="does not match"):
        run(_closing(store, store.check()))
    other.write_text("")
    store = SFTPStore(store.target)
    with pytest.raises(RemoteRefused, match="not in"):
        run(_closing(store, store.check()))


def test_a_key_the_server_does_not_know_is_refused_without_retries(sshd: SSHServer,
                                                                   tmp_path: Path) -> None:
    from fixtures_sshd import keygen
    keygen(tmp_path / "stranger")
    target = dataclasses.replace(sshd.store(sshd.admin).target, key_file=tmp_path / "stranger")
    store = SFTPStore(target)
    before = sshd.log.read_text().count("Connection from")
    with pytest.raises(RemoteRefused, match="authentication") as err:
        run(_closing(store, store.get("config")))
    assert err.value.op == "get" and err.value.path == "config"
    assert str(target.key_file) in str(err.value)
    assert sshd.log.read_text().count("Connection from") == before + 1, "not retried"


@pytest.mark.parametrize("over", ["sftp", "s3"])
def test_a_device_download_matches_the_published_disk(over: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    """Published and assigned with vmclient-admin, downloaded with the device's own
    account or key (read_published, as provisioning does)."""
    repo, raw = published(server_of(over, request), tmp_path, mib=64)
    dev = repo.enrol("laptop")
    assert repo.admin("assign", "office", "laptop") == 0
    out = tmp_path / "system.raw"
    device_download(repo, dev, out)
    assert sha256(out) == sha256(raw)


def download_interrupted(sshd: SSHServer, tmp_path: Path, mib: int,
                         on_pack_get: Callable[[int, SFTPStore], None]
                         ) -> tuple[SFTPStore, Path, Path]:
    """A device downloads a published disk over two connections; ``on_pack_get(n,
    store)`` runs at the n-th get of the download whenever it reads a pack.
    (store, the disk written, the disk published)."""
    repo, raw = published(sshd, tmp_path, mib=mib)
    dev = repo.enrol("laptop")
    assert repo.admin("assign", "office", "laptop") == 0
    store = sshd.store(dev.account, connections=2)
    gets = 0
    original_get, original_range = store.get, store.get_range

    def counted(path: str) -> None:
        nonlocal gets
        gets += 1
        if "/packs/" in path:
            on_pack_get(gets, store)

    async def get(path: str, offset: int = 0, length: int | None = None) -> bytes:
        counted(path)
        return await original_get(path, offset, length)

    async def get_range(path: str, offset: int, length: int,
                        into: bytearray | None = None) -> bytearray | memoryview:
        counted(path)  # (the packs' ranged reads)
        return await original_range(path, offset, length, into)

    store.get = get  # type: ignore[method-assign]
    store.get_range = get_range  # type: ignore[method-assign]
    out = tmp_path / "system.raw"
    run(_closing(store, read_published(store, repo.admin_public, dev.wrapping, "office", out)))
    return store, out, raw


def test_connection_killed_mid_download_resumes_and_bytes_match(sshd: SSHServer,
                                                                tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_sessions(gets: int, _store: SFTPStore) -> None:
        if gets in (6, 12):  # twice, while reads are in flight
            threading.Timer(0.02, lambda: killed.append(sshd.kill_sessions())).start()
    store, out, raw = download_interrupted(sshd, tmp_path, 192, kill_sessions)
    time.sleep(0.1)
    assert killed and all(killed), "the sessions were killed"
    assert store.reconnects >= 1
    assert sha256(out) == sha256(raw)


def test_an_ssh_process_that_dies_mid_download_is_replaced_and_bytes_match(
        sshd: SSHServer, tmp_path: Path) -> None:
    killed: list[int] = []

    def kill_ssh(gets: int, store: SFTPStore) -> None:
        if gets == 6:  # while reads are in flight
            killed.extend(store.pids())
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    store, out, raw = download_interrupted(sshd, tmp_path, 96, kill_ssh)
    assert killed, "the ssh processes were killed"
    assert store.reconnects >= 1
    assert sha256(out) == sha256(raw)


async def passed_on(store: SFTPStore, n: int) -> None:
    """Until the store's ssh processes have passed on ``n`` bytes to it."""
    def written() -> int:
        total = 0
        for pid in store.pids():
            with contextlib.suppress(OSError):
                io = Path(f"/proc/{pid}/io").read_text()
                total += int(re.search(r"^wchar: (\d+)", io, re.M).group(1))  # type: ignore[union-attr]
        return total
    deadline = time.monotonic() + 30
    while written() < n:
        assert time.monotonic() < deadline, "the transfer did not start"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("into", [False, True], ids=["get", "get_range"])
def test_a_large_object_resumes_at_the_offset_it_reached(sshd: SSHServer, into: bool) -> None:
    data = os.urandom(160 * MiB)
    (sshd.repo / "big").write_bytes(data)
    store = sshd.store(sshd.admin, connections=1)

    async def scenario() -> bool:
        await store.check()  # connected: the kill lands in the transfer
        task = asyncio.ensure_future(store.get_range("big", 0, len(data)) if into else
                                     store.get("big"))
        await passed_on(store, 16 * MiB)  # the kill lands in the transfer, not before it
        assert sshd.kill_sessions() > 0
        return await task == data  # (a task holding 160 MiB is slow to repr at loop close)

    assert run(_closing(store, scenario()))
    assert store.reconnects == 1 and store.resumed_bytes > 0


def test_a_large_upload_resumes_at_the_size_the_temporary_file_reached(
        sshd: SSHServer) -> None:
    data = os.urandom(160 * MiB)
    store = sshd.store(sshd.admin, connections=1)

    async def scenario() -> None:
        await store.put_atomic("images/t/warm", b"connect first")
        task = asyncio.ensure_future(store.put_atomic("images/t/big", data, exclusive=True))
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".tmp-") and p.stat().st_size > 16 * MiB
                      for p in (sshd.repo / "images/t").iterdir()):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.005)
        assert sshd.kill_sessions() > 0
        await task

    run(_closing(store, scenario()))
    assert (sshd.repo / "images/t/big").read_bytes() == data
    assert store.reconnects == 1 and store.resumed_upload_bytes > 0
    assert not [p for p in (sshd.repo / "images/t").iterdir() if p.name.startswith(".")]


def test_puts_of_growing_and_shrinking_sizes_through_one_connection_keep_their_bytes(
        sshd: SSHServer) -> None:
    store = sshd.store(sshd.admin, connections=1)
    blobs = [os.urandom(n) for n in (MiB, 5 * MiB + 3, 100, 0, 7 * MiB, 2 * MiB - 1)]

    async def scenario() -> None:
        for i, blob in enumerate(blobs):
            await store.put_atomic(f"images/t/{i}", blob)
        for i, blob in enumerate(blobs):
            assert await store.get(f"images/t/{i}") == blob

    run(_closing(store, scenario()))


def test_a_write_the_server_cannot_store_raises_naming_the_path(sshd: SSHServer) -> None:
    full = sshd.repo / "images/full"
    full.mkdir(parents=True)
    mounted = testlib.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", full])
    need(mounted.returncode == 0, f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        store = sshd.store(sshd.admin)
        with pytest.raises(RemoteRefused, match="put of 'images/full/obj'") as refused:
            run(_closing(store, store.put_atomic("images/full/obj", os.urandom(4 * MiB))))
        assert refused.value.path == "images/full/obj" and store.reconnects == 0
        assert not (full / "obj").exists()
    finally:
        testlib.run(["umount", "-l", full], check=True)


def test_an_object_that_shrinks_during_a_read_ends_the_read_where_it_ends(
        sshd: SSHServer) -> None:
    data = os.urandom(8 * MiB)
    (sshd.repo / "shrinks").write_bytes(data)
    store = sshd.store(sshd.admin, connections=1)

    async def scenario() -> bytes:
        def read(conn: Connection) -> bytes:
            handle = conn.open(str(sshd.repo / "shrinks"), READ_FLAG)
            os.truncate(sshd.repo / "shrinks", 3 * MiB + 5)
            buf = bytearray()
            conn.read(handle, MiB, 8 * MiB, buf.extend, "shrinks")
            conn.close_handle(handle, "shrinks")
            return bytes(buf)
        return await store._run("get", "shrinks", read)

    assert run(_closing(store, scenario())) == data[MiB:3 * MiB + 5]


@pytest.mark.parametrize("over", ["sftp", "s3"])
def test_a_tampered_pack_on_the_server_is_refused_and_named(
        over: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A bit of a published pack flipped by the server's operator (on S3: through the
    admin's own credentials): the device's download names that pack and leaves no disk."""
    repo, _raw = published(server_of(over, request), tmp_path, mib=16)
    dev = repo.enrol("laptop")
    assert repo.admin("assign", "office", "laptop") == 0
    op = repo.operator
    pack = op.names("images/office/store/packs")[0]
    blob = bytearray(op.read(pack))
    blob[len(blob) // 3] ^= 0x01
    op.write(pack, bytes(blob))
    out = tmp_path / "system.raw"
    with pytest.raises(RemoteIntegrityError) as err:
        device_download(repo, dev, out)
    assert err.value.obj_type == "chunk"
    assert err.value.path == pack and pack in str(err.value)
    assert not out.exists(), "no disk that looks complete"
    assert not list(tmp_path.glob(".*partial")), "no partial file left behind"


@pytest.mark.parametrize("over", ["sftp", "s3"])
def test_a_truncated_pack_is_refused(over: str, request: pytest.FixtureRequest,
                                     tmp_path: Path) -> None:
    repo, _raw = published(server_of(over, request), tmp_path, mib=16)
    dev = repo.enrol("laptop")
    assert repo.admin("assign", "office", "laptop") == 0
    op = repo.operator
    pack = op.names("images/office/store/packs")[0]
    data = op.read(pack)
    op.write(pack, data[:len(data) // 2])
    out = tmp_path / "system.raw"
    with pytest.raises(RemoteIntegrityError) as err:
        device_download(repo, dev, out)
    assert pack in str(err.value)
    assert not out.exists()


def server_of(over: str, request: pytest.FixtureRequest) -> SSHServer | SeaweedFS:
    """The session's sshd or SeaweedFS."""
    return request.getfixturevalue("sshd" if over == "sftp" else "seaweedfs")  # type: ignore[no-any-return]


def test_a_server_that_stays_down_gives_an_error_naming_host_path_and_operation(
        sshd: SSHServer) -> None:
    store = sshd.store(sshd.admin, attempts=3, backoff=0.05)

    async def scenario() -> None:
        await store.put_atomic("images/t/x", b"1")
        sshd.stop()
        await store.get("images/t/x")

    with pytest.raises(RemoteUnavailable) as err:
        run(_closing(store, scenario()))
    text = str(err.value)
    assert "get" in text and "images/t/x" in text and f"127.0.0.1:{sshd.port}" in text
    assert "3 attempt" in text


_LOGGED = re.compile(r'^(open|fsync|close) "([^"]+)"|^(posix-rename|rename) old "([^"]+)" '
                     r'new "([^"]+)"')


def test_publish_over_sftp_fsyncs_each_object_before_the_rename_that_publishes_it(
        sshd: SSHServer, tmp_path: Path) -> None:
    """sftp-server's own log of the admin's publish: every object is written to a
    temporary file, fsync@openssh.com'ed, closed, then renamed into place; packs are
    published before the index naming them, the index before the manifest, the manifest
    before the catalog."""
    sshd.log_sftp("root")
    repo = Repo(sshd, tmp_path)
    assert repo.admin_sftp("init") == 0
    assert repo.admin_sftp("publish", "office", str(qcow2(make_disk(tmp_path / "d.raw", 8)))) == 0
    seen: dict[str, list[str]] = {}  # temporary name -> what happened to it, in order
    renamed: list[str] = []  # published names, in order
    for line in sshd.sftp_log.read_text().splitlines():
        m = _LOGGED.match(line)
        if m is None:
            continue
        if m[1]:
            seen.setdefault(m[2], []).append(m[1])
        elif posixpath.basename(m[4]).startswith(".tmp-"):  # (not a lock moved aside)
            assert seen.get(m[4], [])[-3:] == ["open", "fsync", "close"], (m[4], seen.get(m[4]))
            renamed.append(posixpath.relpath(m[5], str(sshd.repo)))
    assert "config" in renamed and "catalog" in renamed

    def where(kind: str) -> list[int]:
        return [i for i, p in enumerate(renamed) if re.fullmatch(kind, p)]

    packs, index = where(r"images/office/store/packs/.*"), where(r"images/office/store/index/.*")
    manifest, catalog = where(r"images/office/versions/1/manifest"), where("catalog")
    assert packs and index and manifest and catalog
    assert max(packs) < min(index) and max(index) < min(manifest) < max(catalog)


def test_a_server_gone_mid_upload_gives_an_error_naming_host_port_and_path_and_no_object(
        sshd: SSHServer) -> None:
    store = sshd.store(sshd.admin, connections=1, attempts=2, backoff=0.05)
    data = os.urandom(160 * MiB)

    async def scenario() -> None:
        await store.put_atomic("images/t/warm", b"connect first")
        task = asyncio.ensure_future(store.put_atomic("images/t/big", data))
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".tmp-") and p.stat().st_size > 8 * MiB
                      for p in (sshd.repo / "images/t").iterdir()):
            assert time.monotonic() < deadline and not task.done()
            await asyncio.sleep(0.005)
        sshd.stop()  # the listener and every session
        await task

    with pytest.raises(RemoteUnavailable) as err:
        run(_closing(store, scenario()))
    text = str(err.value)
    assert "put of 'images/t/big'" in text and f"127.0.0.1:{sshd.port}" in text
    assert "2 attempt" in text and f"reachable on port {sshd.port}" in text
    assert not (sshd.repo / "images/t/big").exists()
