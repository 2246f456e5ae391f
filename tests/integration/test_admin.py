"""vmclient-admin end to end: real qemu-img, a real sshd, a device confined as enrol prints."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest
from fixtures_sshd import SSHServer
from sftp_repo import Repo, make_disk, published, qcow2

from testlib import OFFICE_RECIPE
from vmclient.admin.images import read_published
from vmclient.store import crypto, layout
from vmclient.store.errors import ObjectNotFound
from vmclient.store.orders import Order
from vmclient.store.repo import get_signed

MiB = 1 << 20


RECIPE = OFFICE_RECIPE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _closing(store, coro):  # type: ignore[no-untyped-def]
    try:
        return await coro
    finally:
        await store.close()


def test_init_refuses_to_keep_the_admin_keys_inside_the_repository(
        sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo(sshd, tmp_path)
    repo.key_dir = sshd.repo / "keys"
    assert repo.admin("init") == 64
    assert "inside the repository" in capsys.readouterr().err
    assert not (sshd.repo / "config").exists() and not repo.key_dir.exists()


def test_init_twice_is_refused(sshd: SSHServer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo(sshd, tmp_path)
    assert repo.admin("init") == 0
    assert (repo.key_dir / "admin.pem").stat().st_mode & 0o777 == 0o600
    assert repo.admin("init") == 64
    assert "already holds a repository" in capsys.readouterr().err


def test_publish_then_list_shows_each_version_and_a_growing_serial(
        sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo, raw = published(sshd, tmp_path, mib=32)
    changed = bytearray(raw.read_bytes())
    changed[5 * MiB:5 * MiB + 4096] = b"\x5a" * 4096
    v2 = tmp_path / "v2.raw"
    v2.write_bytes(bytes(changed))
    capsys.readouterr()
    assert repo.admin("publish", "office", str(v2)) == 0  # raw: read as it is
    out = capsys.readouterr().out
    assert re.search(r"version 2: 32\.0 MiB disk, 1 new chunks in 1 packs", out), out
    assert repo.admin("list") == 0
    listing = capsys.readouterr().out
    assert "catalog serial 3" in listing
    assert re.search(r"office\s+v1\s+32\.0 MiB", listing)
    assert re.search(r"office\s+v2\s+32\.0 MiB", listing)


def test_publishing_something_that_is_not_an_image_is_a_usage_error(
        sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = Repo(sshd, tmp_path)
    assert repo.admin("init") == 0
    assert repo.admin("publish", "office", str(tmp_path / "missing.qcow2")) == 64
    assert "no such image file" in capsys.readouterr().err
    assert repo.admin("publish", "Bad Name", str(qcow2(make_disk(tmp_path / "d.raw", 1)))) == 64
    assert "image name" in capsys.readouterr().err


def test_publish_over_sftp_then_an_enrolled_assigned_device_downloads_it(
        sshd: SSHServer, tmp_path: Path) -> None:
    repo = Repo(sshd, tmp_path)
    assert repo.admin_sftp("init") == 0
    raw = make_disk(tmp_path / "disk.raw", 48)
    assert repo.admin_sftp("publish", "office", str(qcow2(raw))) == 0
    dev = repo.enrol("laptop-7")
    recipe = tmp_path / "office.toml"
    recipe.write_text(RECIPE)
    assert repo.admin_sftp("assign", "office", "laptop-7", "--recipe", str(recipe)) == 0

    store = sshd.store(dev.account)
    out = tmp_path / "system.raw"

    async def device_side() -> Order:
        await read_published(store, repo.admin_public, dev.wrapping, "office", out)
        admin = repo.admin_public
        path = layout.order(dev.id, 1)
        _s, body, _raw = await get_signed(store, path, {crypto.key_id(admin): admin}, "order",
                                          f"{dev.id}/1")
        return Order.parse(body, dev.id, 1, path)

    order = asyncio.run(_closing(store, device_side()))
    assert sha256(out) == sha256(raw)
    assert order.action == "assign" and order.args["vm"] == "office"
    assert "kind = \"business\"" in order.args["recipe"]


@pytest.mark.parametrize(("recipe", "error"), [
    (RECIPE.replace("vcpus = 1", "vcpus = 0"), "office.toml: vcpus: 0 is outside 1..64"),
    ('format = 1\nname = "office"\nkind = "business"\n', "office.toml: image: needs exactly one of catalog"),
    (RECIPE.replace('catalog = "office"', 'catalog = "other"'),
     "installs image 'other', not 'office'"),
    (RECIPE.replace('kind = "business"', 'kind = "private"').replace(
        'catalog = "office"', 'qcow2 = "/srv/office.qcow2"').replace('"business"', '"private"'),
     "installs a business VM"),
])
def test_a_recipe_the_laptop_would_refuse_is_not_signed(
        sshd: SSHServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], recipe: str,
        error: str) -> None:
    """``assign IMAGE DEVICE --recipe`` checks the recipe with the laptop's parser first:
    a broken one is refused, and neither the order nor the image key is written."""
    repo = Repo(sshd, tmp_path)
    assert repo.admin("init") == 0
    assert repo.admin("publish", "office", str(qcow2(make_disk(tmp_path / "d.raw", 2)))) == 0
    dev = repo.enrol("laptop")
    before = sorted(p.relative_to(repo.path) for p in repo.path.rglob("*"))
    path = tmp_path / "office.toml"
    path.write_text(recipe)
    capsys.readouterr()
    assert repo.admin("assign", "office", "laptop", "--recipe", str(path)) != 0
    assert error in capsys.readouterr().err
    assert sorted(p.relative_to(repo.path) for p in repo.path.rglob("*")) == before
    assert not (repo.path / layout.device_dir(dev.id) / "orders").exists() or \
        not any((repo.path / layout.device_dir(dev.id) / "orders").iterdir())


def test_a_device_not_assigned_to_an_image_cannot_unwrap_it(sshd: SSHServer,
                                                            tmp_path: Path) -> None:
    repo, _raw = published(sshd, tmp_path, mib=4)
    dev = repo.enrol("laptop")
    store = sshd.store(dev.account)
    with pytest.raises(ObjectNotFound):
        asyncio.run(_closing(store, read_published(store, repo.admin_public, dev.wrapping,
                                                   "office", tmp_path / "out.raw")))


def test_a_second_version_downloads_only_the_changed_chunks(sshd: SSHServer,
                                                            tmp_path: Path) -> None:
    repo, raw = published(sshd, tmp_path, mib=32)
    dev = repo.enrol("laptop")
    assert repo.admin("assign", "office", "laptop") == 0
    data = bytearray(raw.read_bytes())
    for i in range(8):  # 8 scattered 64 KiB writes
        off = (i * 37 + 3) * (64 << 10)
        data[off:off + (64 << 10)] = bytes([i + 1]) * (64 << 10)
    v2 = tmp_path / "v2.raw"
    v2.write_bytes(bytes(data))
    assert repo.admin("publish", "office", str(qcow2(v2))) == 0

    store = sshd.store(dev.account)
    out1, out2 = tmp_path / "v1.out", tmp_path / "v2.out"

    async def upgrade() -> int:
        m1, _f1 = await read_published(store, repo.admin_public, dev.wrapping, "office", out1,
                                       version=1)
        have = {}
        blob = out1.read_bytes()
        cs = m1.disks[0].chunk_size
        for i, cid in enumerate(m1.disks[0].ids):
            have[cid] = blob[i * cs:(i + 1) * cs]
        _m2, f2 = await read_published(store, repo.admin_public, dev.wrapping, "office", out2,
                                       local=have)
        return f2.plan.download_bytes

    downloaded = asyncio.run(_closing(store, upgrade()))
    assert sha256(out1) == sha256(raw)
    assert sha256(out2) == sha256(v2)
    assert 0 < downloaded <= 1.3 * 8 * (64 << 10), downloaded
