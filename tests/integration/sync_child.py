"""One sync in a process of its own (the kill test SIGKILLs it); argv[1] is JSON."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-services" / "src"))

from vmclient.store import crypto
from vmclient.store.localfs import LocalDirStore
from vmclient.sync import engine
from vmclient.virt.libvirt import Hypervisor


async def main(args: dict[str, object]) -> None:
    hv = Hypervisor("qemu:///system")
    await hv.connect()
    try:
        result = await engine.sync_vm(
            hv, LocalDirStore(str(args["repo"])),
            crypto.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(args["device"]))),
            str(args["uuid"]), crypto.KeySet.derive(bytes.fromhex(str(args["secret"]))),
            state_dir=Path(str(args["state"])), scratch_dir=Path(str(args["scratch"])),
            recipients=[crypto.x25519_public(bytes.fromhex(r))
                        for r in args["recipients"]])  # type: ignore[attr-defined]
    finally:
        await hv.close()
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
