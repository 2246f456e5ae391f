"""Adapter to udev (pyudev) and evdev (python-evdev): the lid and the power supplies.

- The lid switch is the input device whose capabilities include ``SW_LID``
  (udev tags it ``power-switch``).  Its state is read with ``EVIOCGSW`` and its
  changes arrive as ``EV_SW``/``SW_LID`` events.  It may appear and disappear
  (docks, resume, module reload): the watcher follows udev ``add``/``remove``.
- AC and batteries are ``power_supply`` devices; every change event leads to a
  fresh reading of all of them (:func:`read_power`, pure).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import evdev
import pyudev
from evdev import ecodes

from .policy import LidState, PowerSource

log = logging.getLogger(__name__)

_IOC_READ = 2


def _eviocgsw(length: int) -> int:
    return (_IOC_READ << 30) | (length << 16) | (ord("E") << 8) | 0x1B


@dataclass(frozen=True)
class PowerReading:
    source: PowerSource
    battery_present: bool
    battery_percent: float
    critical: bool


def read_power(untrusted_supplies: Iterable[Mapping[str, str]],
               critical_percent: float) -> PowerReading:
    """AC/battery state from ``power_supply`` sysfs attributes (pure).

    A machine with no battery runs on mains by definition.  Peripheral
    batteries (``scope=Device``: mice, headsets) do not count.
    """
    mains_online = False
    capacities: list[float] = []
    critical = False
    for s in untrusted_supplies:
        kind = s.get("type", "")
        if kind in ("Mains", "USB", "USB_C", "USB_PD", "USB_PD_DRP", "BrickID", "Wireless"):
            mains_online |= s.get("online", "0").strip() == "1"
        elif kind == "Battery" and s.get("scope", "System") != "Device":
            if s.get("present", "1").strip() != "1":
                continue
            with contextlib.suppress(ValueError):
                capacities.append(max(0.0, min(100.0, float(s.get("capacity", "")))))
            critical |= s.get("capacity_level", "") == "Critical"
    present = bool(capacities)
    percent = sum(capacities) / len(capacities) if capacities else 0.0
    # No battery: mains by definition.  A battery and no mains adapter online:
    # battery (a laptop whose adapter udev does not show counts as on battery).
    source = PowerSource.AC if not present or mains_online else PowerSource.BATTERY
    crit = source == PowerSource.BATTERY and (critical or percent <= critical_percent)
    return PowerReading(source, present, percent, crit)


class UdevWatcher:
    """Feeds lid and power changes to callbacks; runs on the asyncio loop."""

    def __init__(self, on_lid: Callable[[LidState], None],
                 on_power: Callable[[PowerReading], None], critical_percent: float) -> None:
        self.on_lid = on_lid
        self.on_power = on_power
        self.critical_percent = critical_percent
        self.context = pyudev.Context()
        self.monitor: pyudev.Monitor | None = None
        self.lid: evdev.InputDevice[str] | None = None
        self.lid_state = LidState.UNKNOWN
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.monitor = pyudev.Monitor.from_netlink(self.context)
        self.monitor.filter_by("power_supply")
        self.monitor.filter_by("input")
        self.monitor.start()
        self._loop.add_reader(self.monitor.fileno(), self._on_uevent)
        self._find_lid()
        self.power()

    def stop(self) -> None:
        if self._loop is not None and self.monitor is not None:
            self._loop.remove_reader(self.monitor.fileno())
        self._close_lid()

    # -- power supplies --------------------------------------------------------

    def power(self) -> PowerReading:
        supplies = []
        for dev in self.context.list_devices(subsystem="power_supply"):
            attrs = {}
            for key in ("type", "online", "present", "capacity", "capacity_level", "status",
                        "scope"):
                with contextlib.suppress(KeyError, UnicodeDecodeError, OSError):
                    attrs[key] = dev.attributes.asstring(key).strip()
            supplies.append(attrs)
        reading = read_power(supplies, self.critical_percent)
        self.on_power(reading)
        return reading

    # -- lid -------------------------------------------------------------------

    def _find_lid(self) -> None:
        for dev in self.context.list_devices(subsystem="input", ID_INPUT_SWITCH="1"):
            if dev.device_node and self._try_lid(dev.device_node):
                return
        if self.lid is None:
            self._set_lid(LidState.ABSENT)

    def _try_lid(self, devnode: str) -> bool:
        try:
            dev = evdev.InputDevice(devnode)
        except OSError as exc:
            log.debug("cannot open %s: %s", devnode, exc)
            return False
        if ecodes.SW_LID not in dev.capabilities().get(ecodes.EV_SW, []):
            dev.close()
            return False
        self._close_lid()
        self.lid = dev
        log.info("lid switch: %s (%s)", dev.name, devnode)
        assert self._loop is not None
        self._loop.add_reader(dev.fd, self._on_lid_events)
        self._set_lid(self._read_lid_state(dev))
        return True

    def read_lid(self) -> LidState:
        """Read the switch again now (EVIOCGSW) and report a change not yet seen as an event:
        asked before a decision that depends on the lid (a bounce may sit unread)."""
        if self.lid is not None:
            self._set_lid(self._read_lid_state(self.lid))
        return self.lid_state

    def _read_lid_state(self, dev: evdev.InputDevice[str]) -> LidState:
        buf = array.array("B", bytes((ecodes.SW_MAX + 8) // 8))
        try:
            fcntl.ioctl(dev.fd, _eviocgsw(len(buf)), buf, True)
        except OSError as exc:
            log.warning("cannot read the lid state of %s: %s", dev.path, exc)
            return LidState.UNKNOWN
        closed = bool(buf[ecodes.SW_LID // 8] & (1 << (ecodes.SW_LID % 8)))
        return LidState.CLOSED if closed else LidState.OPEN

    def _close_lid(self) -> None:
        dev, self.lid = self.lid, None
        if dev is None:
            return
        if self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(dev.fd)
        with contextlib.suppress(OSError):
            dev.close()

    def _on_lid_events(self) -> None:
        dev = self.lid
        if dev is None:
            return
        try:
            events = list(dev.read())
        except BlockingIOError:
            return
        except OSError as exc:  # device gone (ENODEV)
            log.info("lid switch %s went away: %s", dev.path, exc)
            self._close_lid()
            self._set_lid(LidState.ABSENT)
            return
        for ev in events:
            if ev.type == ecodes.EV_SW and ev.code == ecodes.SW_LID:
                self._set_lid(LidState.CLOSED if ev.value else LidState.OPEN)

    def _set_lid(self, state: LidState) -> None:
        if state != self.lid_state:
            self.lid_state = state
            self.on_lid(state)

    # -- udev events -----------------------------------------------------------

    def _on_uevent(self) -> None:
        assert self.monitor is not None
        while True:
            dev = self.monitor.poll(timeout=0)
            if dev is None:
                return
            if dev.subsystem == "power_supply":
                self.power()
            elif dev.subsystem == "input" and dev.device_node:
                if dev.action == "remove" and self.lid is not None \
                        and dev.device_node == self.lid.path:
                    # Gone: wait for an "add" (re-scanning now would race with
                    # the removal and find the old node).
                    log.info("lid switch %s removed", dev.device_node)
                    self._close_lid()
                    self._set_lid(LidState.ABSENT)
                elif dev.action == "add" and self.lid is None \
                        and dev.properties.get("ID_INPUT_SWITCH") == "1":
                    self._try_lid(dev.device_node)
