"""Our NBD client (sync/nbd.py) against a real ``qemu-nbd``: reads land in the caller's
buffers byte for byte, however they split into requests, and a bad read is named."""

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


def test_preadv_fills_each_buffer_from_the_offset_on(served, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client, data = served
    assert client.size == len(data)
    buffers = [bytearray(C) for _ in range(5)] + [bytearray(100)]
    client.preadv(buffers, 3 * C)
    assert b"".join(buffers) == data[3 * C:8 * C + 100]
    monkeypatch.setattr(nbd, "MAX_READ", 2 * C)  # several requests, each whole buffers
    buffers = [bytearray(C) for _ in range(7)]
    client.preadv(buffers, 11 * C)
    assert b"".join(buffers) == data[11 * C:18 * C]


def test_a_read_past_the_end_is_an_error_naming_the_read(served) -> None:  # type: ignore[no-untyped-def]
    client, data = served
    with pytest.raises(nbd.NBDError, match=rf"read of {2 * C} bytes at {len(data) - C}"):
        client.preadv([bytearray(C), bytearray(C)], len(data) - C)
