"""Throughput of the chunk pipeline: zero check → HMAC-SHA-256 id → zstd → AES-256-GCM.

Runs vmclient.store's own code (Chunker, PackBuilder) over a synthetic disk
image (default 256 MiB: a quarter each of zeros, random bytes, text and
repetitive binary records, interleaved in 1 MiB runs) and compares it with
plain SHA-256 over the same buffer, measured in the same run.  The last line
is one JSON object.

    PYTHONPATH=python-services/src python bench/chunk_pipeline.py [--mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import time

import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vmclient.store import crypto
from vmclient.store.chunker import DEFAULT_CHUNK_SIZE, Chunker
from vmclient.store.pack import PackBuilder

RUN = 1 << 20
WORDS = (b"the quick brown fox jumps over lazy dogs vmclient laptop sync chunk "
         b"manifest catalog order lease wipe business private repository ").split()


def synthetic_disk(mib: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    text = b" ".join(rng.choice(WORDS) for _ in range(RUN // 4))[:RUN]
    record = b"".join(i.to_bytes(4, "little") + b"\x00\x01ELF\x7f" + bytes(4)
                      for i in range(RUN // 16))[:RUN]
    kinds = [bytes(RUN), None, text, record]  # None: fresh random bytes each run
    out = bytearray()
    for i in range(mib):
        kind = kinds[i % 4]
        out += os.urandom(RUN) if kind is None else kind
    return bytes(out)


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="size of the synthetic disk")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    args = ap.parse_args()
    data = synthetic_disk(args.mib)
    size = len(data)
    keys = crypto.KeySet.derive(os.urandom(32))
    cs = args.chunk_size
    views = [data[o:o + cs] for o in range(0, size, cs)]

    t_sha = timed(lambda: hashlib.sha256(data).digest())
    t_hmac = timed(lambda: [crypto.chunk_id(keys.chunk_id, v) for v in views])
    blake = b"k" * 32
    t_blake = timed(lambda: [hashlib.blake2b(v, key=blake).digest() for v in views])
    zc = zstandard.ZstdCompressor(level=1)
    t_zstd = timed(lambda: [zc.compress(v) for v in views])
    gcm, nonce = AESGCM(keys.enc), os.urandom(12)
    t_gcm = timed(lambda: [gcm.encrypt(nonce, v, b"aad") for v in views])

    chunker = Chunker(keys.chunk_id, cs)
    stored = [0, 0, 0]  # chunks kept, plaintext bytes kept, sealed bytes

    def pipeline() -> None:
        builder = PackBuilder(keys, level=1)
        for chunk in chunker.split(data):
            if chunk.is_zero:
                continue
            builder.add(chunk.id, chunk.data)
            stored[0] += 1
            stored[1] += len(chunk.data)
            if builder.full:
                stored[2] += len(builder.finish()[0])
                builder = PackBuilder(keys, level=1)
        stored[2] += len(builder.finish()[0])

    t_pipe = timed(pipeline)
    result = {
        "disk_mib": args.mib, "chunk_kib": cs >> 10,
        "sha256_mb_s": round(rate(size, t_sha)),
        "hmac_sha256_mb_s": round(rate(size, t_hmac)),
        "blake2b_keyed_mb_s": round(rate(size, t_blake)),
        "zstd1_mb_s": round(rate(size, t_zstd)),
        "aes256gcm_mb_s": round(rate(size, t_gcm)),
        "pipeline_mb_s": round(rate(size, t_pipe)),
        "ratio_vs_sha256": round(t_sha / t_pipe, 3),
        "stored_chunks": stored[0],
        "stored_ratio": round(stored[2] / size, 3),
    }
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
