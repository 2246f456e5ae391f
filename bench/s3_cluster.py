"""A SeaweedFS cluster of separate processes on this machine, for bench/s3_fleet.py.

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

With ``limits`` (:class:`fixtures_hosts.HostLimits`) each volume server runs on an
emulated host of its own (tests/integration/fixtures_hosts.py: a network namespace behind
a link of ``limits.mbit`` each way, a CPU quota, its own data directory); the master
listens on the machine's address on the hosts' bridge, and the filer, the S3 gateway and
the clients stay in the machine's namespace, so every byte between the gateway and a
volume server crosses that server's link.  :meth:`Cluster.servers` says what each server
took.
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

from fixtures_hosts import Host, HostLimits, Hosts
from fixtures_s3 import BUCKET, WEED, free_ports

from vmclient.admin import s3iam
from vmclient.transport.s3 import S3Credentials, S3Store, S3Target

__all__ = ["BUCKET", "Cluster"]


class Cluster:
    def __init__(self, volumes: int, identities: list[dict[str, object]] = (),  # type: ignore[assignment]
                 limits: HostLimits | None = None) -> None:
        self.volumes = volumes
        self.limits = limits
        self.hosts: Hosts | None = None
        self.on: dict[str, Host] = {}  # the volume servers' hosts, by process name
        self.ip = "127.0.0.1"  # where the master, filer and gateway listen
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

    def _spawn(self, name: str, *args: str, host: Host | None = None) -> None:
        log = (self.dir / f"{name}.log").open("wb")
        argv = [WEED, f"-logdir={self.dir}", *args]
        self.procs[name] = subprocess.Popen(
            host.argv(argv) if host else argv, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        log.close()

    def start(self) -> Cluster:
        if self.limits is not None:
            self.hosts = Hosts(self.limits).start()
            # the machine's address on the hosts' bridge: the hosts reach the master there,
            # and the filer and gateway reach the hosts from there (their outgoing
            # connections are bound to it, and 127.0.0.1 reaches no other namespace)
            self.ip = self.hosts.switch_ip
            self.endpoint = f"http://{self.ip}:{self.s3}"
        master = f"{self.ip}:{self.master}.{self.master_grpc}"
        ip = [f"-ip={self.ip}", f"-ip.bind={self.ip}"]
        (self.dir / "master").mkdir()
        self._spawn("master", "master", *ip, f"-port={self.master}",
                    f"-port.grpc={self.master_grpc}", f"-mdir={self.dir}/master",
                    "-volumeSizeLimitMB=256", "-defaultReplication=000", "-telemetry=false")
        for i, (port, grpc) in enumerate(self.volume_ports):
            name = f"volume{i}"
            (self.dir / name).mkdir()
            host = self.hosts.add(name) if self.hosts else None
            if host:
                self.on[name] = host
            where = [f"-ip={host.ip}", f"-ip.bind={host.ip}"] if host else ip
            self._spawn(name, "volume", *where, f"-port={port}", f"-port.grpc={grpc}",
                        f"-dir={self.dir}/{name}", "-max=100", f"-master={master}", host=host)
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "admin", "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            "credentials": [{"accessKey": self.admin.access_key,
                             "secretKey": self.admin.secret_key}]}, *self.identities]}))
        (self.dir / "filer").mkdir()
        self._spawn("filer", "filer", *ip, f"-port={self.filer}",
                    f"-port.grpc={self.filer_grpc}", f"-master={master}",
                    f"-defaultStoreDir={self.dir}/filer")
        self._spawn("s3", "s3", f"-ip.bind={self.ip}", f"-port={self.s3}",
                    f"-port.grpc={self.s3_grpc}", "-port.iceberg=0", "-port.lance=0",
                    f"-filer={self.ip}:{self.filer}.{self.filer_grpc}", f"-config={config}",
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
        with urllib.request.urlopen(f"http://{self.ip}:{self.master}{path}",
                                    timeout=30) as r:
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

    def volume_sizes(self) -> dict[str, int]:
        """Bytes of the volumes on each volume server, as the master's ``/vol/status``
        has them (by server URL)."""
        sizes: dict[str, int] = {}

        def walk(node: object) -> None:  # DataCenters > dc > rack > server: [volumes]
            if isinstance(node, dict):
                for key, value in node.items():
                    if isinstance(value, list) and value and all(
                            isinstance(v, dict) and "Size" in v for v in value):
                        sizes[key] = sizes.get(key, 0) + sum(int(v["Size"]) for v in value)
                    else:
                        walk(value)
        walk(self._master("/vol/status"))
        return sizes

    def servers(self) -> dict[str, dict[str, object]]:
        """What each volume server took: its volumes and their bytes (the master's view),
        the bytes of its directory's ``.dat`` files, and on an emulated host the bytes its
        link carried each way and how long its CPU quota held it back."""
        deadline = time.monotonic() + 20
        while True:  # the master learns the sizes from the servers' heartbeats (~5 s)
            counts, sizes = self.volume_counts(), self.volume_sizes()
            dat = {f"volume{i}": sum(p.stat().st_size
                                     for p in (self.dir / f"volume{i}").glob("*.dat"))
                   for i in range(self.volumes)}
            if sum(sizes.values()) == sum(dat.values()) or time.monotonic() > deadline:
                break
            time.sleep(1)
        out: dict[str, dict[str, object]] = {}
        for i, (port, _grpc) in enumerate(self.volume_ports):
            name = f"volume{i}"
            host = self.on.get(name)
            url = f"{host.ip if host else self.ip}:{port}"
            out[name] = {
                "url": url, "volumes": counts.get(url, 0), "volume_bytes": sizes.get(url, 0),
                "dat_bytes": dat[name]}
            if host:
                link = host.link_bytes()
                out[name].update({"link_to_bytes": link["to"], "link_from_bytes": link["from"],
                                  "cpu_throttled_s": round(host.cpu_throttled()["throttled_s"], 2)})
        return out

    def tail(self) -> str:
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self.dir.glob("*.log")))

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def close(self) -> None:
        try:
            for p in self.procs.values():
                p.kill()
            for p in self.procs.values():
                p.wait(30)
        finally:
            if self.hosts is not None:
                self.hosts.close()  # (namespaces, links, qdiscs, cgroups)
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
