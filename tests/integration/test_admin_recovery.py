"""An interrupted ``vmclient-admin publish``: rolled back or resumed, its lock released on
Ctrl-C, ``break-lock``, and a damaged stored pack whose chunks are uploaded again.

A local repository directory (the admin tool on the storage server); real qemu-img.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sftp_repo import make_disk, qcow2

from testlib import ROOT
from vmclient.admin import images
from vmclient.admin import keys as admin_keys
from vmclient.admin.main import main as admin_main
from vmclient.store import layout
from vmclient.store.remote import PassOn
from vmclient.store.repo import get_catalog, get_config
from vmclient.transport.localfs import LocalDirStore

MiB = 1 << 20


class Admin:
    def __init__(self, tmp: Path) -> None:
        self.repo, self.key_dir, self.tmp = tmp / "repo", tmp / "admin-keys", tmp
        self.repo.mkdir()

    def __call__(self, *argv: str) -> int:
        return admin_main(["--repo", str(self.repo), "--key-dir", str(self.key_dir), *argv])

    def argv(self, *argv: str) -> list[str]:
        return [sys.executable, "-c", "import sys; from vmclient.admin.main import main; "
                "sys.exit(main())", "--repo", str(self.repo), "--key-dir", str(self.key_dir),
                *argv]

    def catalog_versions(self, name: str) -> list[int]:
        k = admin_keys.load(self.key_dir)
        store = LocalDirStore(self.repo)

        async def read() -> list[int]:
            cfg = await get_config(store, k.admin.public_key())
            cat, _d = await get_catalog(store, k.admin.public_key(), cfg.repository)
            return [v.version for v in cat.images.get(name, ())]

        return asyncio.run(read())

    def verify(self, name: str, version: int, expected: Path) -> None:
        k = admin_keys.load(self.key_dir)
        out = self.tmp / f"check-{version}.raw"
        asyncio.run(images.read_published(LocalDirStore(self.repo), k.admin.public_key(),
                                          k.escrow, name, out, version=version))
        assert out.read_bytes() == expected.read_bytes()

    def leftovers(self) -> list[str]:
        return sorted(str(p.relative_to(self.repo)) for p in self.repo.rglob("*")
                      if p.name.startswith(".tmp-") or ".gone-" in p.name or p.name == "lock"
                      or (p.parent.name.endswith(".gone") and p.is_file()))


class CatalogFails(PassOn):
    """A repository whose catalog cannot be written: the publish dies between the version
    manifest and the catalog (as a crash or a lost connection there does)."""

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        if path == layout.CATALOG:
            raise ConnectionResetError("connection lost before the catalog")
        await self.inner.put_atomic(path, data, exclusive=exclusive)


def test_a_publish_interrupted_before_the_catalog_is_rolled_back_by_the_next(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    admin = Admin(tmp_path)
    assert admin("init") == 0
    v1 = make_disk(tmp_path / "v1.raw", 8, seed=1)
    assert admin("publish", "office", str(v1)) == 0
    v2 = make_disk(tmp_path / "v2.raw", 8, seed=2)
    k = admin_keys.load(admin.key_dir)

    async def interrupted() -> None:
        store = LocalDirStore(admin.repo)
        cfg = await get_config(store, k.admin.public_key())
        cat, _d = await get_catalog(store, k.admin.public_key(), cfg.repository)
        await images.publish(CatalogFails(store), cfg, cat, "office", v2, k.admin, k.escrow)

    with pytest.raises(ConnectionResetError):
        asyncio.run(interrupted())
    assert (admin.repo / layout.image_manifest("office", 2)).exists()  # unlisted
    assert admin.catalog_versions("office") == [1]
    assert admin.leftovers() == []  # the lock was released
    (admin.repo / "images/office/store/packs/.tmp-killed").write_bytes(b"half a pack")
    capsys.readouterr()
    assert admin("publish", "office", str(v2)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "version 2:" in out and " 0 new chunks" in out, out  # its packs were reused
    assert admin.catalog_versions("office") == [1, 2]
    assert admin.leftovers() == []  # the killed upload's temporary file swept
    admin.verify("office", 2, v2)
    admin.verify("office", 1, v1)


def _fake_qemu_img(tmp: Path) -> tuple[dict[str, str], Path]:
    """PATH with a ``qemu-img`` whose conversion takes long (it marks its start and
    sleeps): the window a Ctrl-C lands in.  The process that marks is the one that sleeps,
    as a real conversion is one process: with ``: > mark; sleep 60`` in the shell, a Ctrl-C
    between the two (a loaded machine) reached the shell only, which then started the sleep
    and waited for it: 60 s with the pipe to vmclient-admin open."""
    bindir, mark = tmp / "bin", tmp / "converting"
    bindir.mkdir()
    real = "/usr/bin/qemu-img"
    script = bindir / "qemu-img"
    converting = f"import pathlib, time; pathlib.Path({str(mark)!r}).touch(); time.sleep(60)"
    script.write_text(f'#!/bin/sh\nif [ "$1" = convert ]; then exec {sys.executable} -c '
                      f'"{converting}"; fi\nexec {real} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT / "python-services" / "src")}
    return env, mark


def test_ctrl_c_during_the_conversion_releases_the_image_lock(tmp_path: Path) -> None:
    admin = Admin(tmp_path)
    assert admin("init") == 0
    image = qcow2(make_disk(tmp_path / "v1.raw", 8))
    env, mark = _fake_qemu_img(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(admin.argv("publish", "office", str(image), "--tmpdir", str(work)),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert (admin.repo / layout.image_lock("office")).exists()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert admin.leftovers() == [], "the image lock (or a temporary file) was left"
    assert list(work.iterdir()) == []  # the conversion's scratch directory is gone
    assert admin("publish", "office", str(image)) == 0  # at once, not 30 minutes later


def test_break_lock_frees_an_image_whose_publisher_is_gone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vmclient.store.locks import Whoami, lock_document
    admin = Admin(tmp_path)
    assert admin("init") == 0
    lock = admin.repo / layout.image_lock("office")
    lock.parent.mkdir(parents=True)
    other = Whoami("admin-2", "f" * 32, "another-boot", 4242)  # another host: age only
    lock.write_bytes(lock_document("vmclient-admin publish office", int(time.time()), "ab",
                                   me=other))
    disk = make_disk(tmp_path / "v1.raw", 4)
    capsys.readouterr()
    assert admin("publish", "office", str(disk)) == 69
    assert "held by vmclient-admin publish office" in capsys.readouterr().err
    held = lock.read_bytes()
    assert admin("break-lock", "office", "--dry-run") == 0
    assert "dry run: would break the lock of vmclient-admin publish office" in \
        capsys.readouterr().out
    assert lock.read_bytes() == held
    assert admin("break-lock", "office") == 0
    assert "broke the lock of vmclient-admin publish office" in capsys.readouterr().out
    assert admin.leftovers() == []
    assert admin("break-lock", "images/office/lock") == 0
    assert "not locked" in capsys.readouterr().out
    assert admin("break-lock", "images/office/catalog") == 64
    assert admin("publish", "office", str(disk)) == 0


def test_a_truncated_pack_is_not_reused_by_the_next_publish(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A server crash without fsync can keep a pack's name and lose its tail (§8.1): the
    next publish finds it shorter than its index says and uploads those chunks again."""
    admin = Admin(tmp_path)
    assert admin("init") == 0
    v1 = make_disk(tmp_path / "v1.raw", 8, seed=3, fill=1.0)
    assert admin("publish", "office", str(v1)) == 0
    packs = sorted((admin.repo / "images/office/store/packs").rglob("*"), key=lambda p: p.name)
    pack = next(p for p in packs if p.is_file())
    with pack.open("r+b") as f:
        f.truncate(pack.stat().st_size // 2)
    capsys.readouterr()
    assert admin("publish", "office", str(v1)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "version 2:" in out and " 0 new chunks" not in out, out
    admin.verify("office", 2, v1)
    assert admin.leftovers() == []


def test_a_publish_reusing_a_damaged_stored_chunk_uploads_it_again(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A flipped byte in a stored blob (same size: the index cannot tell): the next publish
    reads back what it reuses, uploads the damaged chunk again from the image, copies the
    pack's good blobs and drops the pack, so both versions read back whole."""
    admin = Admin(tmp_path)
    assert admin("init") == 0
    v1 = make_disk(tmp_path / "v1.raw", 8, seed=4, fill=1.0)
    assert admin("publish", "office", str(v1)) == 0
    pack = next(p for p in (admin.repo / "images/office/store/packs").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x01  # inside the first blob
    pack.write_bytes(bytes(data))
    capsys.readouterr()
    assert admin("publish", "office", str(v1)) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "1 stored chunks it reuses were damaged" in out, out
    assert not pack.exists()
    admin.verify("office", 2, v1)
    admin.verify("office", 1, v1)  # the same chunks: v1 is whole again too
    assert admin.leftovers() == []
