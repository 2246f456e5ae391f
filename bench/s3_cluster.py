"""A SeaweedFS cluster of separate processes on 127.0.0.1, for bench/s3_fleet.py.

tests/integration/fixtures_s3.py runs ``weed server`` (master, one volume server, filer
and S3 gateway in one process); the fleet simulation needs 1 and then 2 volume servers,
so this starts ``weed master``, ``volumes`` x ``weed volume``, ``weed filer`` and
``weed s3`` as processes of their own (4.48's ``weed filer -s3`` never opened its S3
port here), in a temporary directory, with the same admin identity and IAM API as the
fixture.  Replication is ``000`` (one copy): the master spreads new volumes over the
servers and the filer cuts objects into 4 MiB chunks, each written to one volume, so two
servers share the writes (with ``001`` every chunk would go to both).  The master grows
a bucket's volumes where it likes (5 and 2 here, or 7 and 0 when a server joined late,
which left it almost idle), so the start waits for every server to join and grows 4
volumes on each.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from fixtures_s3 import BUCKET, WEED, free_ports

from vmclient.admin import s3iam
from vmclient.transport.s3 import S3Credentials, S3Store, S3Target

__all__ = ["BUCKET", "Cluster"]


class Cluster:
    def __init__(self, volumes: int, identities: list[dict[str, object]] = ()) -> None:  # type: ignore[assignment]
        self.volumes = volumes
        self.identities = list(identities)
        self.dir = Path(tempfile.mkdtemp(prefix="vmbench-weed-"))
        ports = free_ports(6 + 2 * volumes)
        self.master, self.master_grpc, self.filer, self.filer_grpc, self.s3, \
            self.s3_grpc = ports[:6]
        self.volume_ports = [tuple(ports[6 + 2 * i:8 + 2 * i]) for i in range(volumes)]
        self.endpoint = f"http://127.0.0.1:{self.s3}"
        self.admin = S3Credentials("VMCADMIN" + secrets.token_hex(6).upper(),
                                   secrets.token_hex(20))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.dir / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [WEED, f"-logdir={self.dir}", *args], stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def start(self) -> Cluster:
        master = f"127.0.0.1:{self.master}.{self.master_grpc}"
        ip = ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        (self.dir / "master").mkdir()
        self._spawn("master", "master", *ip, f"-port={self.master}",
                    f"-port.grpc={self.master_grpc}", f"-mdir={self.dir}/master",
                    "-volumeSizeLimitMB=256", "-defaultReplication=000", "-telemetry=false")
        for i, (port, grpc) in enumerate(self.volume_ports):
            (self.dir / f"volume{i}").mkdir()
            self._spawn(f"volume{i}", "volume", *ip, f"-port={port}", f"-port.grpc={grpc}",
                        f"-dir={self.dir}/volume{i}", "-max=100", f"-master={master}")
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            "credentials": [{"accessKey": self.admin.access_key,
                             "secretKey": self.admin.secret_key}]}, *self.identities]}))
        (self.dir / "filer").mkdir()
        self._spawn("filer", "filer", *ip, f"-port={self.filer}",
                    f"-port.grpc={self.filer_grpc}", f"-master={master}",
                    f"-defaultStoreDir={self.dir}/filer")
        self._spawn("s3", "s3", "-ip.bind=127.0.0.1", f"-port={self.s3}",
                    f"-port.grpc={self.s3_grpc}", "-port.iceberg=0", "-port.lance=0",
                    f"-filer=127.0.0.1:{self.filer}.{self.filer_grpc}", f"-config={config}",
                    "-iam.readOnly=false")
        deadline = time.monotonic() + 90
        # every volume server known to the master before the first write: the volumes
        # grown then are spread over the servers known (a late server gets none of them)
        while len(self.volume_counts()) < self.volumes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS's volume servers did not join:\n{self.tail()}")
            time.sleep(0.5)
        for node in self.volume_counts():  # as many writable volumes on each server
            self._master(f"/vol/grow?collection={BUCKET}&replication=000&count=4"
                         f"&dataNode={node}")
        store = self.store(self.admin, "")
        try:
            while True:
                try:
                    store.client.create_bucket(Bucket=BUCKET)
                    break
                except Exception as exc:  # not up yet (refused, 503)
                    if "BucketAlready" in str(exc):
                        break
                    dead = [n for n, p in self.procs.items() if p.poll() is not None]
                    if dead or time.monotonic() > deadline:
                        raise RuntimeError(f"SeaweedFS did not start ({dead or exc}):\n"
                                           f"{self.tail()}") from exc
                    time.sleep(0.5)
        finally:
            store.client.close()
        return self

    def _master(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.master}{path}", timeout=30) as r:
            return json.load(r)

    def volume_counts(self) -> dict[str, int]:
        """Volumes per volume server, as the master's topology has them (none before the
        master answers)."""
        try:
            topology = self._master("/dir/status")["Topology"]  # type: ignore[index]
        except OSError:
            return {}
        return {node["Url"]: int(node.get("Volumes", 0))
                for dc in topology.get("DataCenters") or ()
                for rack in dc.get("Racks") or ()
                for node in rack.get("DataNodes") or ()}

    def tail(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.dir.glob("*.log")))

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def close(self) -> None:
        for p in self.procs.values():
            p.kill()
        for p in self.procs.values():
            p.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)
        ports = [self.master, self.master_grpc, self.filer, self.filer_grpc, self.s3,
                 self.s3_grpc, *(p for pair in self.volume_ports for p in pair)]
        for port in ports:
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)  # the gRPC sockets it makes in /tmp

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- what the fleet uses -------------------------------------------------------------

    def target(self, creds: S3Credentials, prefix: str) -> S3Target:
        return S3Target(bucket=BUCKET, prefix=prefix, endpoint=self.endpoint, credentials=creds)

    def store(self, creds: S3Credentials, prefix: str) -> S3Store:
        return S3Store(self.target(creds, prefix))

    async def issue(self, prefix: str, devices: list[str]) -> list[S3Credentials]:
        """Each device's own access key, issued as ``vmclient-admin s3-identity issue``
        issues it (:mod:`vmclient.admin.s3iam`)."""
        store = self.store(self.admin, prefix)
        try:
            return [await s3iam.issue(store, d) for d in devices]
        finally:
            await store.close()
