"""Our NBD client (sync/nbd.py) against a real ``qemu-nbd``: reads give the bytes chunk by
chunk, however they split into requests, and a bad read is named."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from testlib import need
from vmclient.sync import nbd

C = 64 << 10


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    need(shutil.which("qemu-nbd") is not None, "qemu-nbd is not installed")
    data = os.urandom(40 * C)
    img = tmp_path / "disk.raw"
    img.write_bytes(data)
    with nbd.export(img, None, fmt="raw") as client:
        yield client, data


def test_read_run_gives_each_chunk_from_the_offset_on(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, data = served
    assert client.size == len(data)
    got = client.read_run([C] * 5 + [100], 3 * C)
    assert [len(g) for g in got] == [C] * 5 + [100]
    assert b"".join(got) == data[3 * C:8 * C + 100]
    monkeypatch.setattr(nbd, "MAX_READ", 2 * C)  # several requests, each of whole chunks
    assert b"".join(client.read_run([C] * 7, 11 * C)) == data[11 * C:18 * C]


def test_a_read_past_the_end_is_an_error_naming_the_read(served) -> None:  # type: ignore[no-untyped-def]
    client, data = served
    with pytest.raises(nbd.NBDError, match=rf"read of {2 * C} bytes at {len(data) - C}"):
        client.read_run([C, C], len(data) - C)
