"""The one atomic write: temporary file in the same directory, fsync, rename, fsync of the directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from vmclient.host import files
from vmclient.host.files import commit, write_atomic, write_private


def _steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """What write_atomic does to the file system, in order (fsync by what the fd is)."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append(("fsync", kind))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        seen.append(("rename", f"{Path(src).parent == Path(dst).parent}"))
        real_replace(src, dst)

    def link(src: str | Path, dst: str | Path) -> None:
        seen.append(("link", f"{Path(src).parent == Path(dst).parent}"))
        real_link(src, dst)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    monkeypatch.setattr(files.os, "link", link)
    return seen


def test_write_atomic_fsyncs_the_file_renames_in_place_then_fsyncs_the_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _steps(monkeypatch)
    target = tmp_path / "d" / "state.json"
    write_private(target, b"one")
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert steps == [("fsync", "file"), ("rename", "True"), ("fsync", "dir")] * 2
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert os.listdir(target.parent) == ["state.json"]  # no temporary file left


def test_exclusive_creation_links_and_refuses_an_existing_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _steps(monkeypatch)
    target = tmp_path / "signing.key"
    write_private(target, b"k" * 32, exclusive=True)
    with pytest.raises(FileExistsError):
        write_private(target, b"x" * 32, exclusive=True)
    assert target.read_bytes() == b"k" * 32
    assert steps[:3] == [("fsync", "file"), ("link", "True"), ("fsync", "dir")]
    assert os.listdir(tmp_path) == ["signing.key"]


def test_not_durable_renames_without_fsync_and_mode_and_temporary_name_are_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _steps(monkeypatch)
    target = tmp_path / "objects" / "o"
    write_atomic(target, b"data", mode=0o644, durable=False, dir_mode=None,
                 temporary=".tmp-o-0123")
    assert steps == [("rename", "True")]
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert target.read_bytes() == b"data"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state.json"
    write_private(target, b"old")

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        write_private(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_without_make_parent_a_removed_directory_is_not_brought_back(tmp_path: Path) -> None:
    gone = tmp_path / "vm" / "stream"
    with pytest.raises(FileNotFoundError):
        write_atomic(gone / "filled", b"{}", durable=False, make_parent=False)
    assert not (tmp_path / "vm").exists()
    gone.mkdir(parents=True)
    write_atomic(gone / "filled", b"{}", durable=False, make_parent=False)
    assert (gone / "filled").read_bytes() == b"{}" and os.listdir(gone) == ["filled"]


def test_commit_makes_a_tool_written_file_durable_under_its_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = _steps(monkeypatch)
    tmp = tmp_path / ".partial-disk.qcow2"
    tmp.write_bytes(b"qcow")
    commit(tmp, tmp_path / "disk.qcow2")
    assert steps == [("fsync", "file"), ("rename", "True"), ("fsync", "dir")]
    assert os.listdir(tmp_path) == ["disk.qcow2"]


def test_state_files_of_sync_are_root_only(tmp_path: Path) -> None:
    """The per-VM sync record and syncd's status file (once written 0644, the status
    without an fsync) go through the one helper: 0600 in a 0700 directory."""
    from vmclient.sync import state

    state.save(tmp_path, "office", state.VMSyncState(3, "cp"))
    record = tmp_path / "sync" / "office.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert state.load(tmp_path, "office") == state.VMSyncState(3, "cp")
    known = {"office": {"last_sync": 1, "snapshot": "s"}}
    state.save_status(tmp_path / "syncd", known)
    status = tmp_path / "syncd" / "status.json"
    assert stat.S_IMODE(status.stat().st_mode) == 0o600
    assert json.loads(status.read_text()) == known
