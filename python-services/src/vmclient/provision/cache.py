"""Local state of the Receiver: the last catalog seen, and the chunk cache.

* ``catalog.json`` holds the highest catalog serial and its digest this laptop
  has accepted (root-only, replaced atomically).  A lower serial is a replay, a
  different catalog under the same serial an equivocation
  (``documents.check_catalog_fresh``).
* The chunk cache ``cache/<image>/<2 hex>/<64 hex>`` holds every chunk of an
  image downloaded so far, **still sealed** with the image's content key (as it
  came from the pack; it opened and matched its id before it was kept).  It is
  the download journal: an interrupted download (dropped connection, reboot)
  resumes by fetching only the chunks the cache lacks, and a new image version
  fetches only the chunks that changed.  Entries are reopened (AEAD, id, length)
  whenever they are used; a torn entry after a power cut is dropped and fetched
  again.  An entry is ``plaintext length (u32 BE) | sealed blob``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import struct
from pathlib import Path

from .keys import write_private

_LEN = struct.Struct(">I")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class CatalogState:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "catalog.json"

    def load(self) -> tuple[int, str]:
        try:
            doc = json.loads(self.path.read_text())
            return int(doc["serial"]), str(doc["digest"])
        except FileNotFoundError:
            return 0, ""

    def save(self, serial: int, digest: str) -> None:
        write_private(self.path, json.dumps({"serial": serial, "digest": digest}).encode())


class ChunkCache:
    """Sealed chunks of one image, by chunk id."""

    def __init__(self, state_dir: Path, image: str) -> None:
        self.dir = state_dir / "cache" / image

    def _path(self, cid: bytes) -> Path:
        h = cid.hex()
        return self.dir / h[:2] / h

    def ids(self) -> set[bytes]:
        out: set[bytes] = set()
        if not self.dir.is_dir():
            return out
        for sub in self.dir.iterdir():
            if sub.is_dir():
                out.update(bytes.fromhex(f.name) for f in sub.iterdir() if _HEX64.fullmatch(f.name))
        return out

    def put(self, cid: bytes, plain_length: int, sealed: bytes) -> None:
        """Keep a verified sealed chunk (temp + rename; no fsync: entries are reverified)."""
        final = self._path(cid)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{secrets.token_hex(6)}"
        with open(tmp, "wb") as f:
            f.write(_LEN.pack(plain_length) + sealed)
        os.replace(tmp, final)

    def put_many(self, entries: list[tuple[bytes, int, bytes]]) -> None:
        for cid, plain_length, sealed in entries:
            self.put(cid, plain_length, sealed)

    def get(self, cid: bytes) -> tuple[int, bytes] | None:
        try:
            raw = self._path(cid).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) < _LEN.size:
            return None
        return int(_LEN.unpack(raw[:_LEN.size])[0]), raw[_LEN.size:]

    def drop(self, cid: bytes) -> None:
        self._path(cid).unlink(missing_ok=True)

    def sync(self) -> None:
        """Make what is cached durable (once per download, not per chunk)."""
        os.sync()

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
