"""One sync in a process of its own (the kill tests SIGKILL it); argv[1] is JSON.

Every write step is logged to stderr as ``phase NAME PATH`` as it completes (lock, keys,
pack, index, snapshot, latest, unlock), so a test that kills the process at a random
moment can tell which phase the kill hit.  With ``"kill_after": NAME`` the process kills
itself (SIGKILL) right after the first step of that phase, as orders_crash_driver.py
does for a wipe; ``"kill_after": "lock-temporary"`` kills it inside the lock's write
instead, once the lock's temporary file is written and before it is linked into place,
``"unlock-aside"`` inside the unlock, the lock set aside and not yet deleted (a local
repository only: the hook is ``os.link``, which LocalDirStore's exclusive put and
rename use).  With ``"sftp": {...}`` the repository is reached over SFTP, with
``"s3": {"url", "credentials"}`` on S3 (SeaweedFS, the device's own identity).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python-services" / "src"))

from vmclient.store import crypto
from vmclient.store.remote import DEFAULT_STALE_AFTER, LockToken, PassOn, RemoteStore
from vmclient.sync import engine
from vmclient.transport import close_store, open_store
from vmclient.transport.localfs import LocalDirStore
from vmclient.transport.sftp import SFTPStore, SFTPTarget
from vmclient.virt.libvirt import Hypervisor

PHASES = ("lock", "keys", "pack", "index", "snapshot", "latest", "unlock")
LOCK_TEMPORARY = "lock-temporary"  # inside the lock's put: its temporary written, not linked
UNLOCK_ASIDE = "unlock-aside"  # inside the unlock: the lock set aside (linked), not deleted


def die_linking(kill_after: str) -> None:
    """SIGKILL this process inside a lock operation of LocalDirStore (whose exclusive put
    and rename link): ``lock-temporary`` when a temporary file is about to be linked into
    place as a lock (``.../lock``); ``unlock-aside`` once the unlock linked the lock to
    the name it sets it aside as (``lock.gone…``), before anything is removed."""
    link = os.link

    def linking(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                *args: object, **kwargs: object) -> None:
        if (kill_after == LOCK_TEMPORARY and Path(dst).name == "lock"
                and Path(src).name.startswith(".tmp-")):
            print(f"phase {LOCK_TEMPORARY} {src}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        link(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        if kill_after == UNLOCK_ASIDE and Path(src).name == "lock" and ".gone" in str(dst):
            print(f"phase {UNLOCK_ASIDE} {dst}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    os.link = linking  # type: ignore[assignment]


def phase_of(path: str) -> str:
    for part, phase in (("/keys/", "keys"), ("/packs/", "pack"), ("/index/", "index"),
                        ("/snapshots/", "snapshot")):
        if part in path:
            return phase
    return "latest" if path.endswith("/latest") else "other"


class Phases(PassOn):
    """``inner``, logging each completed write step and dying after ``kill_after``'s."""

    def __init__(self, inner: RemoteStore, kill_after: str | None) -> None:
        super().__init__(inner)
        self.kill_after = kill_after

    def done(self, phase: str, path: str) -> None:
        print(f"phase {phase} {path}", file=sys.stderr, flush=True)
        if phase == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    async def put_atomic(self, path: str, data: bytes, *, exclusive: bool = False) -> None:
        await self.inner.put_atomic(path, data, exclusive=exclusive)
        self.done(phase_of(path), path)

    async def lock(self, path: str, holder: str, *,
                   stale_after: int = DEFAULT_STALE_AFTER) -> LockToken:
        token = await self.inner.lock(path, holder, stale_after=stale_after)
        self.done("lock", path)
        return token

    async def unlock(self, token: LockToken) -> None:
        await self.inner.unlock(token)
        self.done("unlock", token.path)


def open_remote(args: dict[str, object]) -> RemoteStore:
    s3 = args.get("s3")
    if isinstance(s3, dict):  # the device's identity on SeaweedFS (fixtures_s3.py)
        return open_store(str(s3["url"]), s3_credentials=str(s3["credentials"]))
    sftp = args.get("sftp")
    if isinstance(sftp, dict):
        return SFTPStore(SFTPTarget(host="127.0.0.1", port=int(sftp["port"]),
                                    user=str(sftp["user"]), key_file=Path(sftp["key"]),
                                    known_hosts=Path(sftp["known_hosts"]),
                                    root=str(sftp.get("root", ""))))
    return LocalDirStore(str(args["repo"]))


async def main(args: dict[str, object]) -> None:
    hv = Hypervisor("qemu:///system")
    await hv.connect()
    inner = open_remote(args)
    kill_after = args.get("kill_after")
    if kill_after in (LOCK_TEMPORARY, UNLOCK_ASIDE):
        assert "sftp" not in args and "s3" not in args, \
            f"{kill_after}: killed in a local repository only"
        die_linking(str(kill_after))
    try:
        result = await engine.sync_vm(
            hv, Phases(inner, str(kill_after) if kill_after else None), engine.SyncJob(
                str(args["uuid"]),
                crypto.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(str(args["device"]))),
                crypto.KeySet.derive(bytes.fromhex(str(args["secret"]))),
                state_dir=Path(str(args["state"])), scratch_dir=Path(str(args["scratch"])),
                recipients=[crypto.x25519_public(bytes.fromhex(r))
                            for r in args["recipients"]]))  # type: ignore[attr-defined]
    finally:
        await close_store(inner)
        await hv.close()
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
