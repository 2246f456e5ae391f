"""umockdev testbeds: a lid switch (evdev node answering EVIOCG* ioctls), AC, battery."""

from __future__ import annotations

import errno
import os
import struct
import time

import gi

gi.require_version("UMockdev", "1.0")
from gi.repository import UMockdev

EV_SYN, EV_SW, SW_LID = 0, 5, 0
LID_SYSPATH = "/sys/devices/LNXSYSTM:00/LNXSYBUS:00/PNP0C0D:00/input/input{n}"

LID = """P: /devices/LNXSYSTM:00/LNXSYBUS:00/PNP0C0D:00/input/input{n}
E: SUBSYSTEM=input
E: NAME="Lid Switch"
E: PRODUCT=19/0/5/0
E: EV=21
E: SW=1
E: ID_INPUT=1
E: ID_INPUT_SWITCH=1
A: name=Lid Switch
A: capabilities/ev=21
A: capabilities/sw=1

P: /devices/LNXSYSTM:00/LNXSYBUS:00/PNP0C0D:00/input/input{n}/event{n}
N: input/event{n}
E: DEVNAME=/dev/input/event{n}
E: SUBSYSTEM=input
E: MAJOR=13
E: MINOR={minor}
E: ID_INPUT=1
E: ID_INPUT_SWITCH=1
E: TAGS=:power-switch:
E: CURRENT_TAGS=:power-switch:
A: dev=13:{minor}
"""


class LidIoctls(UMockdev.IoctlBase):
    """Answers the evdev ioctls python-evdev and the daemon issue on the lid node."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def do_handle_ioctl(self, client: UMockdev.IoctlClient) -> bool:
        req = client.get_request()
        typ, nr, size = (req >> 8) & 0xFF, req & 0xFF, (req >> 16) & 0x3FFF
        if typ != ord("E"):
            client.complete(-1, errno.ENOTTY)
            return True
        payload = {
            0x01: struct.pack("i", 0x010001),  # EVIOCGVERSION
            0x02: struct.pack("HHHH", 0x19, 0, 5, 0),  # EVIOCGID
            0x06: b"Lid Switch\0",  # EVIOCGNAME
            0x07: b"PNP0C0D/button/input0\0",  # EVIOCGPHYS
            0x08: b"\0",  # EVIOCGUNIQ
            0x20: bytes([(1 << EV_SYN) | (1 << EV_SW)]),  # EVIOCGBIT(0)
            0x20 + EV_SW: bytes([1 << SW_LID]),  # EVIOCGBIT(EV_SW)
            0x1B: bytes([1 if self.closed else 0]),  # EVIOCGSW
            0x84: struct.pack("i", 0),  # EVIOCGEFFECTS
        }.get(nr, b"" if (0x18 <= nr <= 0x1A or 0x20 <= nr < 0x40 or nr == 0x09) else None)
        if payload is None:
            client.complete(-1, errno.EINVAL)
            return True
        data = client.get_arg().resolve(0, size)
        data.update(0, payload[:size] + bytes(max(0, size - len(payload))))
        ret = len(payload[:size]) if nr in (0x06, 0x07, 0x08) else 0
        client.complete(ret, 0)
        return True


class Laptop:
    """A umockdev testbed; the daemon under test runs with :meth:`env`."""

    def __init__(self, lid: bool = True, battery: bool = True, ac_online: bool = True,
                 capacity: int = 80) -> None:
        self.tb = UMockdev.Testbed.new()
        self.lid = None
        self.lid_n = 4
        if lid:
            self.add_lid()
        self.ac = self.tb.add_device("power_supply", "AC", None,
                                     ["type", "Mains", "online", "1" if ac_online else "0"], [])
        self.bat = None
        if battery:
            self.bat = self.tb.add_device(
                "power_supply", "BAT0", None,
                ["type", "Battery", "present", "1", "status", "Discharging",
                 "capacity", str(capacity), "capacity_level", "Normal", "scope", "System"], [])

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": "libumockdev-preload.so.0", "UMOCKDEV_DIR": self.tb.get_root_dir()}

    def add_lid(self, announce: bool = False) -> None:
        """The lid switch appears (boot, or a dock/resume re-creates the input device)."""
        # A re-created input device gets a new number, as in the kernel.
        self.lid_n += 1
        n = self.lid_n
        self.tb.add_from_string(LID.format(n=n, minor=64 + n))
        self.lid = LidIoctls()
        self.tb.attach_ioctl(self.lid_node, self.lid)
        if announce:
            self.tb.uevent(LID_SYSPATH.format(n=n) + f"/event{n}", "add")

    @property
    def lid_node(self) -> str:
        return f"/dev/input/event{self.lid_n}"

    def remove_lid(self) -> None:
        n = self.lid_n
        self.tb.uevent(LID_SYSPATH.format(n=n) + f"/event{n}", "remove")
        self.tb.detach_ioctl(self.lid_node)
        self.tb.remove_device(LID_SYSPATH.format(n=n) + f"/event{n}")
        self.tb.remove_device(LID_SYSPATH.format(n=n))
        self.lid = None

    def set_lid(self, closed: bool) -> None:
        assert self.lid is not None
        self.lid.closed = closed
        fd = self.tb.get_dev_fd(self.lid_node)
        t = time.time()
        sec, usec = int(t), int((t - int(t)) * 1e6)
        os.write(fd, struct.pack("llHHi", sec, usec, EV_SW, SW_LID, int(closed))
                 + struct.pack("llHHi", sec, usec, EV_SYN, 0, 0))

    def set_ac(self, online: bool) -> None:
        self.tb.set_attribute(self.ac, "online", "1" if online else "0")
        self.tb.uevent(self.ac, "change")

    def set_battery(self, capacity: int, level: str = "Normal") -> None:
        assert self.bat is not None
        self.tb.set_attribute(self.bat, "capacity", str(capacity))
        self.tb.set_attribute(self.bat, "capacity_level", level)
        self.tb.uevent(self.bat, "change")


class SimulatedLaptop:
    """:class:`Laptop` in a child process under umockdev's preload (see laptop_sim.py)."""

    def __init__(self, **opts: object) -> None:
        import json
        import subprocess
        import sys
        from pathlib import Path

        here = Path(__file__).resolve().parent
        env = {**os.environ, "LD_PRELOAD": "libumockdev-preload.so.0",
               "PYTHONPATH": str(here)}
        self.proc = subprocess.Popen([sys.executable, str(here / "laptop_sim.py"), json.dumps(opts)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     text=True)
        assert self.proc.stdout is not None
        self.root = self.proc.stdout.readline().strip()
        if not self.root:
            raise RuntimeError("the umockdev testbed did not start")

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": "libumockdev-preload.so.0", "UMOCKDEV_DIR": self.root}

    def _cmd(self, *args: object) -> None:
        import json

        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"laptop simulator failed on {args}")

    def set_lid(self, closed: bool) -> None:
        self._cmd("lid", closed)

    def remove_lid(self) -> None:
        self._cmd("remove_lid")

    def add_lid(self) -> None:
        self._cmd("add_lid")

    def set_ac(self, online: bool) -> None:
        self._cmd("ac", online)

    def set_battery(self, capacity: int, level: str = "Normal") -> None:
        self._cmd("battery", capacity, level)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except Exception:
            self.proc.kill()
            self.proc.wait()
