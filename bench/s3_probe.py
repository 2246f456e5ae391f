"""Probe an S3 endpoint for a repository: the conditions the format needs, and one write rate.

For a store started by hand (bench/rgw-one-node.sh prints its endpoint and keys):

    PYTHONPATH=python-services/src python bench/s3_probe.py ENDPOINT ACCESS SECRET \
        [--bucket vmclient] [--mib 256]

Checks, through :class:`vmclient.transport.s3.S3Store` (the repository's own client),
each conditional request ``vmclient-admin init`` checks (``S3Store.probe_conditions``:
``If-None-Match: *`` on a put and on a multipart completion, the lock's conditional copy
and delete refusing a wrong ETag), the multipart one again with a 33 MiB object through
``put_atomic``, and that the lock's conditional move works; then writes ``--mib`` MiB as
16 MiB objects (a pack's size), 8 at once, and reads them back.  The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python-services/src"))

from vmclient.errors import VMClientError
from vmclient.transport.s3 import S3Credentials, S3Store, S3Target

MIB = 1 << 20


async def probe(store: S3Store, mib: int) -> dict[str, object]:
    out: dict[str, object] = {}
    out.update(await store.probe_conditions("probe"))  # what vmclient-admin init checks
    big = os.urandom(33 * MIB)  # the same, through put_atomic's own multipart path
    name = f"probe-mp-{secrets.token_hex(4)}"
    await store.put_atomic(name, big, exclusive=True)
    try:
        await store.put_atomic(name, big[::-1], exclusive=True)
        out["exclusive_multipart_33mib"] = False
    except VMClientError:
        out["exclusive_multipart_33mib"] = True
    await store.delete(name)
    src, dst = f"probe-lock-{secrets.token_hex(4)}", f"probe-moved-{secrets.token_hex(4)}"
    await store.put_atomic(src, b"lock", exclusive=True)
    try:
        await store.rename(src, dst)
        out["conditional_move"] = await store.get(dst) == b"lock"
    except VMClientError as exc:
        out["conditional_move"], out["conditional_move_error"] = False, str(exc)
    for p in (src, dst):
        with contextlib.suppress(VMClientError):
            await store.delete(p)
    packs = [os.urandom(16 * MIB) for _ in range(max(1, mib // 16))]
    names = [f"probe-pack-{secrets.token_hex(6)}" for _ in packs]
    start = time.perf_counter()
    await asyncio.gather(*(store.put_atomic(n, d, exclusive=True)
                           for n, d in zip(names, packs, strict=True)))
    out["write_mib_s"] = round(len(packs) * 16 / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    got = await asyncio.gather(*(store.get(n) for n in names))
    out["read_mib_s"] = round(len(packs) * 16 / (time.perf_counter() - start), 1)
    assert got == packs, "read back differs"
    await asyncio.gather(*(store.delete(n) for n in names))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("endpoint")
    ap.add_argument("access_key")
    ap.add_argument("secret_key")
    ap.add_argument("--bucket", default="vmclient")
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    store = S3Store(S3Target(bucket=args.bucket, prefix=f"probe{secrets.token_hex(3)}",
                             endpoint=args.endpoint,
                             credentials=S3Credentials(args.access_key, args.secret_key)))
    try:
        store.client.create_bucket(Bucket=args.bucket)
    except store.client.exceptions.ClientError as exc:
        if "BucketAlready" not in str(exc):
            raise

    async def run() -> dict[str, object]:
        try:
            return await probe(store, args.mib)
        finally:
            await store.close()

    print(json.dumps({"endpoint": args.endpoint, **asyncio.run(run())}))


if __name__ == "__main__":
    main()
