"""The pure core of a streamed restore (``vm restore --stream``): no I/O.

* which chunks of a disk cover a guest read (:func:`pieces`),
* the small cache of chunks already fetched and verified (:class:`ChunkLRU`),
* the stream's description the nbdkit plugin reads (:class:`StreamSpec`),
* how long a read of a missing chunk waits for the repository (:func:`retry_delays`),
* how far the fill reads ahead on this link (:class:`ReadAhead`),
* how much of the disks the fill made local, over all of them (:class:`FillProgress`),
* where the time to running went, step by step (:class:`Timeline`, for provd's log).

docs/sync.md, "Streamed restore", has the design.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field

from ..errors import VMClientError

SPEC_VERSION = 1
READ_TIMEOUT = 30.0  # seconds a guest read waits for an unreachable repository
CACHE_CHUNKS = 1024  # 64 MiB of 64 KiB chunks: the read-ahead window (16 MiB) and more
BATCH = 64  # chunks at most per read-ahead fetch (4 MiB of 64 KiB chunks)
PARALLEL = 4  # read-ahead fetches in flight at once: the window is PARALLEL batches
FIRST_BATCH = 4  # chunks of the first read-ahead fetches, before the link is known
SHARE = 1 / 2  # of the read timeout: the time the read-ahead window may take to land


class StreamSpecError(VMClientError):
    """The stream description {} is not valid: {}"""


def pieces(offset: int, count: int, chunk_size: int, size: int
           ) -> list[tuple[int, int, int]]:
    """The chunks a read of ``count`` bytes at ``offset`` covers: (chunk index, offset in
    the chunk, length), in order.  A read past ``size`` is an error (nbdkit never asks)."""
    if offset < 0 or count < 0 or offset + count > size:
        raise ValueError(f"read of {count} bytes at {offset} outside a {size}-byte disk")
    out = []
    pos, end = offset, offset + count
    while pos < end:
        index, start = divmod(pos, chunk_size)
        n = min(chunk_size - start, end - pos)
        out.append((index, start, n))
        pos += n
    return out


def chunk_length(index: int, chunk_size: int, size: int) -> int:
    """Bytes of chunk ``index`` (the last one may be short)."""
    return max(0, min(chunk_size, size - index * chunk_size))


class ChunkLRU:
    """Verified plaintext chunks by index, the least recently used dropped first."""

    def __init__(self, capacity: int = CACHE_CHUNKS) -> None:
        if capacity < 1:
            raise ValueError("a chunk cache holds at least one chunk")
        self.capacity = capacity
        self._items: OrderedDict[int, bytes] = OrderedDict()

    def get(self, index: int) -> bytes | None:
        data = self._items.get(index)
        if data is not None:
            self._items.move_to_end(index)
        return data

    def put(self, index: int, data: bytes) -> None:
        self._items[index] = data
        self._items.move_to_end(index)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __contains__(self, index: int) -> bool:
        return index in self._items

    def __len__(self) -> int:
        return len(self._items)


def retry_delays(timeout: float, first: float = 0.2, most: float = 5.0) -> Iterator[float]:
    """The pauses between attempts to fetch a chunk, doubling up to ``most``, summing to at
    most ``timeout``: then the read fails (and the VM, ``rerror_policy='stop'``, pauses)."""
    spent, delay = 0.0, first
    while spent + delay <= timeout:
        yield delay
        spent += delay
        delay = min(delay * 2, most)
    if spent < timeout:
        yield timeout - spent


class ReadAhead:
    """How many chunks one read-ahead fetch asks for, sized to the link's measured rate.

    A read that finds its chunk in flight in a read-ahead fetch waits for that fetch, so
    the read timeout bounds the fetch too: at a fixed 4 MiB, 4 in flight, a link under
    ~150 KiB/s could not land one within 30 s and every read of the fill failed (the VM
    paused).  Each fetch that lands tells a rate (its chunks over its time: a lower bound,
    as the fetches in flight share the link); the window (:data:`PARALLEL` fetches) is
    sized to move in ``SHARE`` times the read timeout at that rate: at most :data:`BATCH`
    chunks a fetch, at least one, and at most twice the last size (it starts at
    :data:`FIRST_BATCH`, before the link is known).  A fetch that gave up halves it."""

    def __init__(self, timeout: float, most: int = BATCH, first: int = FIRST_BATCH) -> None:
        if timeout <= 0 or most < 1:
            raise ValueError("a read-ahead needs a positive timeout and batch")
        self.timeout, self.most = timeout, most
        self.batch = max(1, min(most, first))

    def window(self) -> int:
        """Chunks kept fetched or in flight past a sequential read."""
        return self.batch * PARALLEL

    def landed(self, seconds: float, chunks: int, ok: bool = True) -> None:
        """A fetch of ``chunks`` took ``seconds`` and succeeded (``ok``) or gave up."""
        if not ok:
            self.batch = max(1, self.batch // 2)
            return
        rate = chunks / max(seconds, 1e-3)  # chunks a second
        fits = int(rate * self.timeout * SHARE / PARALLEL)
        self.batch = max(1, min(self.most, 2 * self.batch, fits))


class FillProgress:
    """How much of a streamed VM's disks is local (bytes done, bytes total), over every
    disk, never going back.

    libvirt tells only of the block jobs running at a look: a disk whose pull completed is
    no longer backed (it counts whole); a disk between two pulls (one failed on a dead
    link, or suspended while the VM is paused) has no job (it keeps what it had); a pull
    started again counts from 0 while it skips what is local (each disk keeps the largest
    share seen).  Summing only the jobs running made the total shrink as each disk
    completed and the bar jump back."""

    def __init__(self, sizes: Mapping[str, int]) -> None:
        self.sizes = dict(sizes)
        self.share = dict.fromkeys(self.sizes, 0.0)

    def update(self, backed: Collection[str], jobs: Mapping[str, tuple[int, int]]
               ) -> tuple[int, int]:
        for disk in self.sizes:
            if disk not in backed:
                share = 1.0
            elif jobs.get(disk, (0, 0))[1] > 0:
                cur, end = jobs[disk]
                share = min(1.0, cur / end)
            else:
                continue
            self.share[disk] = max(self.share[disk], share)
        return self.counts()

    def counts(self) -> tuple[int, int]:
        """(bytes local, bytes total) over every disk."""
        return (sum(int(size * self.share[d]) for d, size in self.sizes.items()),
                sum(self.sizes.values()))

    def to_json(self) -> bytes:
        """The shares, for the next provd (:meth:`restore`): after a power loss the VM is
        off and no job tells how far its disks are until it runs and a pull gets there."""
        return json.dumps(self.share, sort_keys=True).encode()

    def restore(self, untrusted: bytes) -> None:
        """Take the shares saved by :meth:`to_json` (a provd before), never going back;
        what is not a share of one of these disks is ignored (the fill then counts from
        what the jobs say)."""
        try:
            doc = json.loads(untrusted)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        for disk, share in doc.items():
            if (disk in self.share and isinstance(share, (int, float))
                    and not isinstance(share, bool) and 0.0 <= share <= 1.0):
                self.share[disk] = max(self.share[disk], float(share))


@dataclass
class Timeline:
    """When each step of a restore ran, from the command on (steps may overlap): what
    provd logs once the VM runs, so the time to running can be read step by step."""

    clock: Callable[[], float] = time.monotonic
    started: float = -1.0
    spans: list[tuple[str, float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.spans.append((name, start - self.started, self.clock() - self.started))

    def summary(self) -> str:
        """``catalog 0.00-0.04 s, overlays 0.05-2.80 s, start 2.80-3.50 s: 3.50 s`` (the
        steps in the order they began; the total is from the start to now)."""
        parts = [f"{name} {a:.2f}-{b:.2f} s" for name, a, b in
                 sorted(self.spans, key=lambda s: s[1])]
        return f"{', '.join(parts)}: {self.clock() - self.started:.2f} s"


@dataclass(frozen=True)
class StreamSpec:
    """One streamed disk, as provd hands it to the nbdkit plugin (``spec=`` file, root-only).

    ``ids`` names the file next to it holding the disk's chunk ids (32 bytes each, the
    snapshot's ``chunks`` as provd verified them); the data key is not here: the plugin
    unwraps it with the device key, as provd does."""

    version: int
    config: str  # provd's configuration file: the repository and the device's credentials
    vm: str
    disk: str
    store: str  # the VM's chunk store in the repository
    size: int
    chunk_size: int
    ids: str
    timeout: float = READ_TIMEOUT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, untrusted: bytes, where: str) -> StreamSpec:
        try:
            doc = json.loads(untrusted)
        except ValueError as exc:
            raise StreamSpecError(where, f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or set(doc) != set(cls.__dataclass_fields__):
            raise StreamSpecError(where, f"fields {sorted(doc) if isinstance(doc, dict) else doc!r}"
                                  f", expected {sorted(cls.__dataclass_fields__)}")
        if doc["version"] != SPEC_VERSION:
            raise StreamSpecError(where, f"version {doc['version']!r}, expected {SPEC_VERSION}")
        for name in ("size", "chunk_size"):
            if not isinstance(doc[name], int) or isinstance(doc[name], bool) or doc[name] <= 0:
                raise StreamSpecError(where, f"{name} {doc[name]!r} is not a positive integer")
        if not isinstance(doc["timeout"], (int, float)) or doc["timeout"] <= 0:
            raise StreamSpecError(where, f"timeout {doc['timeout']!r} is not positive")
        for name in ("config", "vm", "disk", "store", "ids"):
            if not isinstance(doc[name], str) or not doc[name]:
                raise StreamSpecError(where, f"{name} {doc[name]!r} is not a name")
        return cls(**doc)

    def chunks(self) -> int:
        return -(-self.size // self.chunk_size)

    def check_ids(self, untrusted_ids: bytes, where: str) -> bytes:
        if len(untrusted_ids) != 32 * self.chunks():
            raise StreamSpecError(where, f"{len(untrusted_ids)} bytes of chunk ids, expected "
                                  f"{32 * self.chunks()} for {self.size} bytes")
        return untrusted_ids
