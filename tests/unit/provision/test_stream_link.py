"""What provd's log says when the link to the datacenter drops mid-stream (issue 19).

By hand, with the repository's sshd stopped while two VMs streamed, provd logged nothing
above the transport's INFO retries: the fill stalled, and no warning said why or that
it would go on by itself."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmclient.host.keys import DeviceKeys
from vmclient.provision.stream import Streams
from vmclient.transport.localfs import LocalDirStore
from vmclient.transport.target import RemoteUnavailable


class DroppedLink(LocalDirStore):
    """A repository in a directory behind a link that is up or down."""

    up = True

    async def list(self, prefix: str) -> list[str]:
        if not self.up:
            raise RemoteUnavailable("list", prefix, "vmc-test@127.0.0.1:22", 4,
                                    "ssh: connect to host 127.0.0.1 port 22: Connection "
                                    "refused")
        return await super().list(prefix)


def test_a_dropped_link_is_logged_once_and_its_return_too(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    link = DroppedLink(tmp_path)
    prov = SimpleNamespace(receiver=SimpleNamespace(remote=link),
                           keys=SimpleNamespace(device=DeviceKeys.load_or_create(tmp_path / "d")))
    streams = Streams(prov, tmp_path / "provision.toml", read_timeout=30.0,  # type: ignore[arg-type]
                      poll=0.01)

    async def probes(n: int) -> list[bool]:
        out = []
        for _ in range(n):
            out.append(await streams.link.up("office"))
            await asyncio.sleep(0.03)
        return out

    caplog.set_level(logging.INFO, logger="vmclient.provision.fill")
    assert asyncio.run(probes(1)) == [True]
    assert caplog.messages == []
    link.up = False
    assert not any(asyncio.run(probes(6)))
    assert caplog.messages == [
        "VM office: the datacenter does not answer: the fill of its disks waits and goes on "
        "by itself when it answers; meanwhile a read of what is not here yet waits up to "
        "30 s, then the VM pauses until then"]
    link.up = True
    assert True in asyncio.run(probes(20))
    assert caplog.messages[1:] == ["VM office: the datacenter answers again: the fill of "
                                   "its disks goes on"]
