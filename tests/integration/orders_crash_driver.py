"""Run one order poll of a test laptop and die by SIGKILL right after a given wipe step.

    python orders_crash_driver.py TMP PREFIX STEP
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from fixtures_virt import URI
from orders_env import Laptop

from vmclient.store import crypto
from vmclient.virt.libvirt import Hypervisor


def crash_after(step: str, done: str) -> None:
    if done == step:
        os.kill(os.getpid(), signal.SIGKILL)


async def main(tmp: Path, prefix: str, step: str) -> None:
    hv = Hypervisor(URI)
    await hv.connect()
    lap = Laptop(prefix, tmp, hv, crypto.Ed25519PrivateKey.generate())
    await lap.agent(after_wipe_step=lambda done: crash_after(step, done)).poll()
    await hv.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
