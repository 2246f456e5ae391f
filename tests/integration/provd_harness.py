"""vmclient-provd as a child process on the private system bus, with a minimal config."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from fixtures_bus import PrivateSystemBus
from fixtures_virt import URI, cpu_profile, scaled

from testlib import SERVICES

NAME = "org.vmclient.VMClient1.Provisioning"
PATH = "/org/vmclient/VMClient1/Provisioning"


async def call(b: MessageBus, member: str, sig: str = "", body: list[Any] | None = None,
               dest: str = NAME, path: str = PATH, iface: str = NAME) -> Message:
    """One method call (provd's Provisioning interface unless told), its reply as it is."""
    reply = await b.call(Message(destination=dest, path=path, interface=iface, member=member,
                                 signature=sig, body=body or []))
    assert reply is not None
    return reply


def ok(reply: Message) -> list[Any]:
    assert reply.message_type == MessageType.METHOD_RETURN, (reply.error_name, reply.body)
    return list(reply.body)


class ProvDaemon:
    """Nothing to install from (no admin key): enough for Start, List and the displays;
    or with ``config``, a configuration of the test's (``provision_env.write_config``)."""

    def __init__(self, bus: PrivateSystemBus, workdir: Path, config: Path | None = None
                 ) -> None:
        self.bus, self.workdir = bus, workdir
        self.config = workdir / "provision.toml"
        if config is not None:
            self.config = config
        else:
            self._write_config(workdir)
        self.log_path = workdir / "provd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self, workdir: Path) -> None:
        cpu = cpu_profile()
        self.config.write_text(f"""libvirt_uri = "{URI}"
state_dir = "{workdir / 'state'}"
device_dir = "{workdir / 'device'}"
manage_dir = "{workdir / 'manage'}"
images_dir = "{workdir / 'images'}"
staging_dir = "{workdir / 'staging'}"
domain_type = "{cpu.domain_type}"
cpu_mode = "{cpu.cpu_mode}"
cpu_disable = [{", ".join(f'"{f}"' for f in cpu.cpu_disable)}]

[repository]
location = "{workdir / 'repo'}"
admin_key = "{workdir / 'admin.pub'}"
""")

    def start(self) -> ProvDaemon:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vmclient.provision.daemon", "--config",
                 str(self.config), "--debug"], stdout=log, stderr=subprocess.STDOUT,
                env={**self.bus.env(), "PYTHONPATH": str(SERVICES / "src")})
        conn = self.bus.connection()
        deadline = time.monotonic() + scaled(30)
        while not conn.name_has_owner(NAME):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("vmclient-provd did not come up:\n" + self.log())
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ProvDaemon:
        return self.start()

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        """Stopped; then (unless the block failed) a traceback in its log fails the test."""
        self.stop()
        if exc_type is None:
            assert "Traceback" not in self.log(), self.log()
