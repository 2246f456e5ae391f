"""A snapshot of a business VM in a repository served over SFTP, and laptop B's provd pieces
(a Provisioner reading it over B's confined account, provd's config file) for the
streamed restore (issue 19)."""

from __future__ import annotations

import contextlib
import hashlib
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
                          keys: crypto.KeySet, *, seq: int = 1, memory: bytes = b"",
                          uuid: str = "", domain: str = "") -> Manifest:
    """:func:`put_vm_snapshot` of a disk given as its 64 KiB pieces (made as they are read);
    with ``memory``, the memory image of domain ``domain`` (its XML, UUID ``uuid``)."""
    local = LocalDirStore(root)
    dev = env.device.device_id()
    chunker = Chunker(keys.chunk_id, CHUNK)
    ids: list[bytes] = []
    mem_ids: list[bytes] = []

    def chunks() -> Iterator[Chunk]:
        for i, piece in enumerate(pieces):
            c = chunker.chunk(i, piece)
            ids.append(c.id)
            if not c.is_zero:
                yield c
        for i, o in enumerate(range(0, len(memory), CHUNK)):
            c = chunker.chunk(i, memory[o:o + CHUNK])
            mem_ids.append(c.id)
            if not c.is_zero:
                yield c

    await ChunkStore(local, layout.vm_store(dev, vm), keys, pack_target=8 << 20).upload(
        chunks(), {})
    text = recipe_text(vm)
    uuid = uuid or str(uuidlib.uuid4())
    old = domain or domain_xml(
        spec.parse(text, "recipe"), uuid=uuid, networks={"business": "old-net", "private": "old-p"},
        cpu=env.cfg.cpu_profile(),
        disks={"system": DiskBinding(PurePosixPath("/old/system.qcow2"), uuid)})
    meta = {"recipe": text, "uuid": uuid, "domain": old}
    disks = [ChunkMap("vda", "system", size, CHUNK, tuple(ids))]
    if memory:
        disks.append(ChunkMap("memory", "memory", len(memory), CHUNK, tuple(mem_ids)))
        meta["memory_sha256"] = hashlib.sha256(memory).hexdigest()
    m = Manifest("snapshot", vm, f"{seq:010d}", seq, int(time.time()), keys.check,
                 tuple(disks), device=dev, meta=meta)
    digest = await put_snapshot(local, env.device.signing(), keys, m)
    await put_wrapped_key(local, layout.vm_key(dev, vm, env.device.wrapping_id()),
                          env.device.signing(),
                          WrappedKey.create(f"vm:{vm}", env.device.wrapping().public_key(), keys))
    await put_pointer(local, env.device.signing(),
                      Pointer(vm, dev, m.label, seq, m.created, digest))
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


# A boot sector that checks its own disk, forever (GNU as, .code16, linked at 0x7c00):
# each pass reads sectors 64 .. end_lba-1 with int 13h AH=42h, 64 at a time, adds them up
# as 32-bit little-endian words and compares the sum with ``expected``; it counts passes
# that matched at 0x504, that did not at 0x506, and BIOS read errors at 0x508 (words;
# 0x500 holds "VMCT").  ``expected`` is at offset 0x1a0 of the sector, ``end_lba`` at 0x1a4.
# Source: .code16; cli; xor ax,ax; mov ds/ss,ax; mov sp,0x7c00; sti; save dl at 0x600;
# pass: ebx=0, lba(0x590)=64; next: DAP at 0x580 {0x10,0,64 sectors,0000:1000 (seg 0x1000),
# lba}; int 13h; jc error; ds=0x1000; si=0; cx=8192; sum: lodsd; add ebx,eax; loop sum;
# lba+=64; cmp lba,end_lba; jb next; cmp ebx,expected; jne bad; inc [0x504]; jmp pass;
# bad: inc [0x506]; jmp pass; error: inc [0x508]; jmp pass.
CHECKER = bytes.fromhex(
    "fa31c08ed88ed0bc007cfb8816000666c7060005564d4354c70604050000c706"
    "06050000c706080500006631db66c706900540000000be8005c60410c6440100"
    "c744024000c744040000c74406001066a190056689440866c7440c00000000b4"
    "428a160006cd1372371eb800108ed831f6b9002066ad6601c3e2f91f66830690"
    "054066a19005663b06a47d72a9663b1ea07d7506ff060405eb90ff060605eb8a"
    "ff060805eb84")


def checking_disk(mib: int, seed: int = 5) -> bytes:
    """A disk whose boot sector checks the rest of it (:data:`CHECKER`); every chunk after
    the first holds random data, so none is answered as zeros."""
    import struct

    body = random_bytes(mib * (1 << 20) - 32768, seed)
    total = sum(struct.unpack(f"<{len(body) // 4}I", body)) & 0xFFFFFFFF
    sector = bytearray(512)
    sector[:len(CHECKER)] = CHECKER
    sector[0x1A0:0x1A8] = struct.pack("<II", total, mib * 2048)
    sector[510:] = b"\x55\xaa"
    return bytes(sector).ljust(32768, b"\0") + body


def random_bytes(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def guest_counters(dom: object) -> tuple[int, int, int, bool]:
    """(passes that matched, passes that did not, read errors, the checker runs) of
    :data:`CHECKER`."""
    import libvirt_qemu

    out = libvirt_qemu.qemuMonitorCommand(dom, "xp /5hx 0x500",
                                          libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    words = [int(w, 16) for w in out.split(":", 1)[1].split()]
    return words[2], words[3], words[4], words[:2] == [0x4D56, 0x5443]
