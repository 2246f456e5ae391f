"""A snapshot of a business VM in a repository served over SFTP, and laptop B's provd pieces
(a Provisioner reading it over B's confined account, provd's config file) for the
streamed restore (issue 19)."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fixtures_sshd import Account, SSHServer, ssh_server
from provision_env import Env, provision_env, write_config

from vmclient.provision import spec
from vmclient.provision.domainxml import DiskBinding, domain_xml
from vmclient.provision.installer import Provisioner
from vmclient.provision.receiver import Receiver
from vmclient.store import crypto, layout
from vmclient.store.chunker import Chunk, Chunker
from vmclient.store.chunkstore import ChunkStore
from vmclient.store.documents import Pointer, WrappedKey
from vmclient.store.objects import ChunkMap, Manifest
from vmclient.store.repo import put_pointer, put_snapshot, put_wrapped_key
from vmclient.store.transport import close_store
from vmclient.transport.localfs import LocalDirStore

CHUNK = 65536


@dataclass
class Streamed:
    env: Env
    server: SSHServer
    account: Account
    config: Path  # provd's configuration file: the repository over SFTP
    prov: Provisioner
    keys: crypto.KeySet


def disk_bytes(mib: int, seed: int = 7) -> bytes:
    """A disk image: random chunks, zero stretches and a repeated chunk (deduplicated)."""
    rnd = secrets.SystemRandom(seed)
    out = bytearray()
    for i in range(mib * 1024 * 1024 // CHUNK):
        if i % 5 == 3:
            out += bytes(CHUNK)
        elif i % 7 == 2:
            out += b"\x42" * CHUNK
        else:
            out += rnd.randbytes(CHUNK)
    return bytes(out)


def recipe_text(vm: str) -> str:
    return f"""format = 1
name = "{vm}"
kind = "business"
vcpus = 1
memory_mib = 256
firmware = "bios"

[image]
catalog = "{vm}-img"

[[disks]]
name = "system"
role = "system"

[network]
zone = "business"

[power]
policy = "pause"

[sync]
enabled = true
"""


async def put_vm_snapshot(env: Env, root: Path, vm: str, data: bytes, keys: crypto.KeySet,
                          *, seq: int = 1) -> Manifest:
    """Laptop A's sync of ``vm`` (one system disk holding ``data``), written as the sync
    engine writes it: packs + index, snapshot, wrapped key, ``latest``."""
    return await put_snapshot_of(env, root, vm, len(data),
                                 (data[o:o + CHUNK] for o in range(0, len(data), CHUNK)), keys,
                                 seq=seq)


async def put_snapshot_of(env: Env, root: Path, vm: str, size: int, pieces: Iterable[bytes],
                          keys: crypto.KeySet, *, seq: int = 1) -> Manifest:
    """:func:`put_vm_snapshot` of a disk given as its 64 KiB pieces (made as they are read)."""
    local = LocalDirStore(root)
    dev = env.device.device_id()
    chunker = Chunker(keys.chunk_id, CHUNK)
    ids: list[bytes] = []

    def chunks() -> Iterator[Chunk]:
        for i, piece in enumerate(pieces):
            c = chunker.chunk(i, piece)
            ids.append(c.id)
            if not c.is_zero:
                yield c

    await ChunkStore(local, layout.vm_store(dev, vm), keys, pack_target=8 << 20).upload(
        chunks(), {})
    text = recipe_text(vm)
    uuid = str(uuidlib.uuid4())
    old = domain_xml(spec.parse(text, "recipe"), uuid=uuid,
                     networks={"business": "old-net", "private": "old-p"},
                     cpu=env.cfg.cpu_profile(),
                     disks={"system": DiskBinding(PurePosixPath("/old/system.qcow2"), uuid)})
    m = Manifest("snapshot", vm, f"{seq:010d}", seq, int(time.time()), keys.check,
                 (ChunkMap("vda", "system", size, CHUNK, tuple(ids)),),
                 device=dev, meta={"recipe": text, "uuid": uuid, "domain": old})
    digest = await put_snapshot(local, env.device.signing(), keys, m)
    await put_wrapped_key(local, layout.vm_key(dev, vm, env.device.wrapping_id()),
                          env.device.signing(),
                          WrappedKey.create(f"vm:{vm}", env.device.wrapping().public_key(), keys))
    await put_pointer(local, env.device.signing(), Pointer(vm, dev, m.label, seq, 0, digest))
    return m


def give_to(account: Account, directory: Path) -> None:
    """The device's own directory belongs to its confined account (as on the server)."""
    import pwd

    pw = pwd.getpwnam(account.user)
    for d, _dirs, files in os.walk(directory):
        os.chown(d, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(d, f), pw.pw_uid, pw.pw_gid)


@contextlib.asynccontextmanager
async def streamed(tmp: Path) -> AsyncIterator[Streamed]:
    with ssh_server() as server:
        async with provision_env(tmp) as env:
            account = server.add_device(env.device.device_id())
            config = write_config(env, tmp)
            text = config.read_text()
            location = f"sftp://{account.user}@127.0.0.1:{server.port}/"
            text = (text.replace(f'location = "{env.cfg.repository.location}"',
                                 f'location = "{location}"')
                    .replace(f'key_file = "{env.cfg.repository.key_file}"',
                             f'key_file = "{account.key_file}"')
                    .replace(f'known_hosts = "{env.cfg.repository.known_hosts}"',
                             f'known_hosts = "{server.known_hosts}"'))
            config.write_text(text)
            remote = server.store(account)
            prov = Provisioner(env.cfg, env.hv, env.device,
                               Receiver(remote, env.dc.pinned, env.device, env.cfg.state_dir,
                                        retry_delay=0.01))
            try:
                yield Streamed(env, server, account, config, prov, crypto.KeySet.generate())
            finally:
                await close_store(remote)
