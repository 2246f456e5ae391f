"""Pure parts of memory/LUKS capture and of the laptop restore."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmclient.sync import disks
from vmclient.sync.nbd import image_json

K = 64 << 10
def test_whole_file_covers_every_chunk_of_a_short_tail() -> None:
    cov = disks.whole_file(3 * K + 100, K)
    assert sorted(cov) == [0, 1, 2, 3]
    assert cov[3][0].length == 100 and cov[3][0].offset == 3 * K


def test_image_json_never_carries_the_passphrase() -> None:
    spec = image_json(Path("/x/a.qcow2"), secret="vmcsec0")
    doc = json.loads(spec.removeprefix("json:"))
    assert doc == {"driver": "qcow2", "file": {"driver": "file", "filename": "/x/a.qcow2"},
                   "encrypt": {"key-secret": "vmcsec0"}}
    assert json.loads(image_json(Path("/x/b.img"), fmt="raw").removeprefix("json:")) == {
        "driver": "raw", "file": {"driver": "file", "filename": "/x/b.img"}}


def test_memory_dir_must_be_ram_backed(tmp_path: Path) -> None:
    from vmclient.host.files import NotRAMBacked, check_ram_backed

    mounts = [line.split()[1:3] for line in Path("/proc/self/mounts").read_text().splitlines()]
    here = max((m for m in mounts if str(tmp_path).startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]))
    if here[1] in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on a {here[1]} here")
    with pytest.raises(NotRAMBacked, match="RAM-backed"):
        check_ram_backed(tmp_path / "mem", "office")
    shm = Path("/dev/shm")
    if shm.is_dir():
        check_ram_backed(shm / f"vmct-unit-{tmp_path.name}", "office")
        (shm / f"vmct-unit-{tmp_path.name}").rmdir()


def test_syncd_status_round_trips_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    from vmclient.sync import state

    assert state.load_status(tmp_path) == {}
    known = {"office": {"last_sync": 1700000000, "snapshot": "0000000003"}}
    state.save_status(tmp_path / "d", known)
    assert state.load_status(tmp_path / "d") == known
    (tmp_path / "status.json").write_text(json.dumps({
        "a": {"last_sync": "x", "snapshot": "s"}, "b": [],
        "c": {"last_sync": 5, "snapshot": "0000000001"}}))
    assert state.load_status(tmp_path) == {"c": {"last_sync": 5, "snapshot": "0000000001"}}
    (tmp_path / "status.json").write_text("{")
    assert state.load_status(tmp_path) == {}  # unreadable: logged, the schedule starts afresh
