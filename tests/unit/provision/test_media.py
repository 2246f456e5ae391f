"""Install media taken in without trusting a path (provision/media.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from vmclient.provision import media
from vmclient.provision.media import MediaError


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    (d / "x.iso").write_bytes(b"iso")
    return d


def opened(media_dir: Path, path: Path | str) -> bytes:
    fd = media.open_in_media_dir(media_dir, PurePosixPath(path))
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="the media dir must be root's")
def test_a_file_inside_the_media_dir_opens(media_dir: Path) -> None:
    (media_dir / "sub").mkdir()
    (media_dir / "sub" / "y.qcow2").write_bytes(b"qcow")
    assert opened(media_dir, media_dir / "x.iso") == b"iso"
    assert opened(media_dir, media_dir / "sub" / "y.qcow2") == b"qcow"


@pytest.mark.skipif(os.geteuid() != 0, reason="the media dir must be root's")
@pytest.mark.parametrize(("name", "problem"), [
    ("outside", "a recipe may name media only inside"),
    ("dotdot", "a recipe may name media only inside"),
    ("the-dir", "a recipe may name media only inside"),
    ("link", r"media/link\.iso: link\.iso: is a symbolic link \(refused\)"),
    ("dirlink", r"media/d/secret: d: is a symbolic link \(refused\)"),
    ("fifo", "not a regular file"),
    ("missing", "No such file or directory"),
])
def test_media_by_path_is_refused_outside_the_dir_and_through_links(
        media_dir: Path, tmp_path: Path, name: str, problem: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"key")
    (media_dir / "link.iso").symlink_to(secret)
    (media_dir / "d").symlink_to(tmp_path)
    os.mkfifo(media_dir / "pipe")
    path = {"outside": str(secret), "dotdot": f"{media_dir}/../secret", "the-dir": media_dir,
            "link": media_dir / "link.iso", "dirlink": media_dir / "d" / "secret",
            "fifo": media_dir / "pipe", "missing": media_dir / "nope.iso"}[name]
    with pytest.raises(MediaError, match=problem):
        opened(media_dir, path)


@pytest.mark.skipif(os.geteuid() != 0, reason="the media dir must be root's")
def test_a_media_dir_others_may_write_is_refused(media_dir: Path) -> None:
    media_dir.chmod(0o777)
    with pytest.raises(MediaError, match="must be owned by root and writable by nobody else"):
        opened(media_dir, media_dir / "x.iso")


@pytest.fixture
def fds(tmp_path: Path) -> Iterator[dict[str, int]]:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    out = {"o_path": os.open(f, os.O_PATH), "write_only": os.open(f, os.O_WRONLY),
           "directory": os.open(tmp_path, os.O_RDONLY), "read": os.open(f, os.O_RDONLY)}
    yield out
    for fd in out.values():
        os.close(fd)


@pytest.mark.parametrize(("kind", "problem"), [("o_path", "not opened for reading"),
                                               ("write_only", "not opened for reading"),
                                               ("directory", "not a regular file")])
def test_a_descriptor_must_be_a_regular_file_opened_for_reading(
        fds: dict[str, int], kind: str, problem: str) -> None:
    with pytest.raises(MediaError, match=f"Install media x: {problem}"):
        media.check_fd(fds[kind], "x")
    assert media.check_fd(fds["read"], "x").st_size == 4


def test_copy_in_keeps_content_and_holes(tmp_path: Path) -> None:
    src = tmp_path / "sparse"
    with src.open("wb") as f:
        f.write(b"A" * 4096)
        f.seek(64 << 20)
        f.write(b"B" * 4096)
        f.truncate(80 << 20)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert media.copy_in(fd, tmp_path / "copy", "sparse") == 80 << 20
    finally:
        os.close(fd)
    copy = tmp_path / "copy"
    assert copy.read_bytes() == src.read_bytes()
    copy.unlink()
    seen: list[int] = []
    fd = os.open(src, os.O_RDONLY)
    try:
        assert media.copy_in(fd, copy, "sparse", seen.append) == 80 << 20
    finally:
        os.close(fd)
    # how far the copy is: after each extent copied (the hole between them skipped),
    # then the end (the file's size: its trailing hole counts)
    assert seen == [4096, (64 << 20) + 4096, 80 << 20], seen
    assert copy.read_bytes() == src.read_bytes()
    assert copy.stat().st_mode & 0o777 == 0o600
    assert copy.stat().st_blocks * 512 < 8 << 20  # the holes stayed holes
    assert not (tmp_path / ".partial-copy").exists()


def test_copy_in_reports_its_progress_at_most_a_step_apart(tmp_path: Path) -> None:
    src = tmp_path / "iso"
    src.write_bytes(os.urandom(4096) * ((2 * media.PROGRESS_STEP + 12345) // 4096 + 1))
    size = src.stat().st_size
    seen: list[int] = []
    fd = os.open(src, os.O_RDONLY)
    try:
        assert media.copy_in(fd, tmp_path / "copy", "iso", seen.append) == size
    finally:
        os.close(fd)
    assert seen == [media.PROGRESS_STEP, 2 * media.PROGRESS_STEP, size, size], seen
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()


@pytest.mark.parametrize(("info", "problem"), [
    ({"format": "raw"}, "not a qcow2 image"),
    ({"format": "qcow2", "backing-filename": "/k"}, "has a backing file"),
    ({"format": "qcow2", "format-specific": {"data": {"data-file": "/k"}}},
     "has an external data file"),
    ({"format": "qcow2", "encrypted": True}, "is encrypted"),
])
def test_an_image_with_a_backing_or_data_file_is_refused(info: dict[str, object],
                                                         problem: str) -> None:
    with pytest.raises(MediaError, match=problem):
        media.check_image(info, "qcow2", "m")
    assert media.check_image({"format": "qcow2", "virtual-size": 5}, "qcow2", "m") == 5
