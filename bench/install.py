#!/usr/bin/env python3
# ruff: noqa: ASYNC221  (the baseline runs alone, timed)
"""Benchmark: installing a business VM from a local-directory repository, and upgrading it.

The repository is written through store/repo.py (the test set-up); the VM is
installed with the provisioning core on the real libvirtd (networks, LUKS
qcow2, domain).  Baseline in the same run: `qemu-img convert` of the same raw
bytes into a LUKS qcow2 (the floor for writing an encrypted disk here).  Then
`--change` percent of the chunks, scattered, are rewritten as version 2 and the
VM is upgraded: how much is downloaded against how much changed.

    python bench/install.py --mib 256 --change 2

The last line is one JSON object.  bench/provision.py measures the SFTP
download against OpenSSH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "integration"), str(ROOT / "tests"),
                str(ROOT / "python-services" / "src")]

from provision_env import image_bytes, provision_env

CHUNK = 64 << 10


async def run(mib: int, change: float) -> dict[str, object]:
    n = mib * (1 << 20) // CHUNK
    v1 = image_bytes(n, seed=3)
    with tempfile.TemporaryDirectory(prefix="vmclient-bench-") as tmp_s:
        tmp = Path(tmp_s)
        async with provision_env(tmp, staging_mib=128) as env:
            image = f"{env.prefix}-img"
            await env.dc.publish(image, v1)

            raw = tmp / "v1.raw"
            raw.write_bytes(v1)
            key = tmp / "key"
            key.write_text(os.urandom(32).hex())
            t = time.monotonic()
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", "--object",
                            f"secret,id=s0,file={key}", "-o",
                            "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                            str(raw), str(tmp / "baseline.qcow2")], check=True)
            baseline_s = time.monotonic() - t

            phases: dict[str, int] = {}
            started: dict[str, float] = {}
            ended: dict[str, float] = {}

            def report(p: object) -> None:
                phase, done = p.phase, p.done  # type: ignore[attr-defined]
                started.setdefault(phase, time.monotonic())
                ended[phase] = time.monotonic()
                phases[phase] = done
            prov = env.provisioner(report=report)
            t = time.monotonic()
            vm = await prov.install(env.recipe(tmp, "bench"))
            install_s = time.monotonic() - t
            download_s = ended["download"] - started["download"]
            assemble_s = ended["assemble"] - started["assemble"]
            installed_download = phases.get("download", 0)

            rnd = random.Random(5)
            changed = rnd.sample([i for i in range(n) if i % 4 != 3], max(1, int(n * change / 100)))
            v2 = bytearray(v1)
            for i in changed:
                v2[i * CHUNK:(i + 1) * CHUNK] = rnd.randbytes(CHUNK)
            await env.dc.publish(image, bytes(v2))
            phases.clear()
            t = time.monotonic()
            await prov.upgrade(vm.name)
            upgrade_s = time.monotonic() - t
            await prov.remove(vm.name)
    changed_mib = len(changed) * CHUNK / 2**20
    downloaded_mib = phases.get("download", 0) / 2**20
    return {
        "image_mib": mib,
        "install_s": round(install_s, 2),
        "install_mib_s": round(mib / install_s, 1),
        "install_downloaded_mib": round(installed_download / 2**20, 1),
        "download_mib_s": round(installed_download / 2**20 / download_s, 1),
        "download_s": round(download_s, 2),
        "assemble_s": round(assemble_s, 2),
        "baseline_luks_convert_s": round(baseline_s, 2),
        "ratio_vs_luks_convert": round(baseline_s / install_s, 3),
        "upgrade_changed_mib": round(changed_mib, 2),
        "upgrade_downloaded_mib": round(downloaded_mib, 2),
        "upgrade_download_ratio": round(downloaded_mib / changed_mib, 3),
        "upgrade_s": round(upgrade_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="image size")
    parser.add_argument("--change", type=float, default=2.0, help="percent of chunks changed")
    args = parser.parse_args()
    result = asyncio.run(run(args.mib, args.change))
    print(f"install {result['install_mib_s']} MiB/s ({result['install_s']} s; LUKS convert of "
          f"the same bytes {result['baseline_luks_convert_s']} s); upgrade downloaded "
          f"{result['upgrade_downloaded_mib']} MiB for {result['upgrade_changed_mib']} MiB changed")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
