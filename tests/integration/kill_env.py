"""Killed syncs: the child's arguments (locally or over SFTP), the phase a kill hit, and
what a repository must not hold once the next sync has run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fixtures_sshd import Account, SSHServer
from sync_env import World

from vmclient.store import layout
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.remote import RemoteStore


def child_args(w: World, dom: object, *, kill_after: str | None = None,
               server: SSHServer | None = None, account: Account | None = None,
               s3: dict[str, str] | None = None) -> list[str]:
    args = w.child_args(dom)  # type: ignore[arg-type]
    extra = json.loads(args[-1])
    if kill_after:
        extra["kill_after"] = kill_after
    if server is not None and account is not None:
        extra["sftp"] = {"port": server.port, "user": account.user,
                         "key": str(account.key_file), "known_hosts": str(server.known_hosts),
                         "root": account.root}
    if s3 is not None:
        extra["s3"] = s3
    return [*args[:-1], json.dumps(extra)]


def phases(stderr: str) -> list[str]:
    """The write steps the child completed, in order (``phase NAME PATH`` lines)."""
    return re.findall(r"^phase (\S+) ", stderr, flags=re.M)


def leftovers(root: Path, device: str) -> list[str]:
    """What a finished sync must not leave in the device's directory: temporary files
    (killed uploads), the lock, locks set aside while broken or unlocked (``lock.gone/*``;
    an empty ``lock.gone`` directory is no object)."""
    base = root / layout.device_dir(device)
    return sorted(str(p.relative_to(root)) for p in base.rglob("*")
                  if p.name.startswith(".tmp-") or p.name == "lock" or ".gone-" in p.name
                  or (p.parent.name.endswith(".gone") and p.is_file()))


async def unindexed(remote: RemoteStore, w: World, vm: str
                    ) -> tuple[dict[str, object], dict[str, str]]:
    """(packs no index names, damaged packs) of the VM's store, as a fresh reader sees them."""
    store = ChunkStore(remote, layout.vm_store(w.a.id, vm), w.keys[vm])
    await store.load_index()
    return dict(store.unindexed), dict(store.damaged)
