"""USB redirection through spice-gtk (the adapter of :mod:`.usb`).

Each VM's SPICE session has its ``SpiceUsbDeviceManager`` (spice-gtk's, over
libusb; usbredir channels exist only where the VM's recipe allows USB).  Here
they are set from :mod:`.usb`'s policy: ``auto-connect`` on the shown VM's
manager only (never locked, never during the first start) with
:data:`.usb.AUTO_CONNECT_FILTER`, and the bar's menu connects or disconnects a
device by hand.  Without libusb access (no ``/dev/bus/usb``: a test machine)
spice-gtk refuses the manager; the shell then has no USB menu entries, and says
why once in its log.

The devices each manager has are kept here from its ``device-added`` and
``device-removed`` signals (a signal's device is a reference of the shell's own;
spice-gtk emits ``device-added`` from its main loop, for the devices already
plugged in too).  ``get_devices()`` is never called: it returns a ``GPtrArray``
(transfer full) whose free function unrefs the devices, and PyGObject frees the
array with the devices it handed out as owned: every call took one reference
from spice-gtk's own, which then freed devices it still used.  The booted test
host's shell crashed in libusb when a stick was plugged in
(``tests/system/test_system_desktop.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gi

from . import usb

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, SpiceClientGLib  # noqa: E402

log = logging.getLogger(__name__)

KEY_FORMAT = "%s %s %s at %d-%d"  # manufacturer, product, [vid:pid], bus, address
NAME_FORMAT = "%s %s %s"


class UsbRedirect:
    def __init__(self, changed: Callable[[], None]) -> None:
        """``changed()``: a device came, went, or moved (the bar's button says so)."""
        self.changed = changed
        self.managers: dict[str, Any] = {}
        self.found: dict[str, dict[str, Any]] = {}  # vm -> {key: its manager's device}
        self.unavailable = ""  # why there is no USB redirection ("" = there is)

    def add(self, vm: str, session: Any) -> None:
        try:
            m = SpiceClientGLib.UsbDeviceManager.get(session)
        except GLib.Error as err:
            if self.unavailable != err.message:
                log.info("no USB redirection: %s", err.message)
            self.unavailable = str(err.message)
            return
        self.unavailable = ""
        m.props.auto_connect = False  # until apply() says this is the shown VM
        m.props.auto_connect_filter = usb.AUTO_CONNECT_FILTER
        found = self.found[vm] = {}
        m.connect("device-added", self._added, found)
        m.connect("device-removed", self._removed, found)
        m.connect("auto-connect-failed", lambda _m, dev, err: log.info(
            "%s: %s not connected: %s", vm, dev.get_description(NAME_FORMAT), err.message))
        m.connect("device-error", lambda _m, dev, err: log.warning(
            "%s: %s: %s", vm, dev.get_description(NAME_FORMAT), err.message))
        self.managers[vm] = m

    def _added(self, _m: Any, dev: Any, found: dict[str, Any]) -> None:
        found[dev.get_description(KEY_FORMAT)] = dev
        self.changed()

    def _removed(self, _m: Any, dev: Any, found: dict[str, Any]) -> None:
        found.pop(dev.get_description(KEY_FORMAT), None)
        self.changed()

    def remove(self, vm: str) -> None:
        """The VM's session is closing (its devices go back to the host with it)."""
        self.managers.pop(vm, None)
        self.found.pop(vm, None)

    def apply(self, shown: str | None, locked: bool, first_start: bool) -> None:
        for vm, m in self.managers.items():
            want = usb.auto_connect(vm, shown, locked, first_start)
            if m.props.auto_connect != want:
                m.props.auto_connect = want

    def devices(self, shown: str | None) -> list[usb.Device]:
        """Every device the host sees, where it is, and whether the shown VM may take it."""
        if not self.managers:
            return []
        here = self.managers.get(shown or "")
        listed = self.found
        out = []
        for key, dev in (listed[shown] if here is not None and shown else
                         next(iter(listed.values()), {})).items():
            owner = next((vm for vm, m in self.managers.items()
                          if key in listed[vm] and m.is_device_connected(listed[vm][key])),
                         None)
            refusal = "" if here is not None else "its session has no USB"
            if here is not None and owner is None:
                try:
                    here.can_redirect_device(dev)
                except GLib.Error as err:
                    refusal = str(err.message)
            out.append(usb.Device(key, dev.get_description(NAME_FORMAT), owner, refusal))
        return out

    def toggle(self, key: str, shown: str, done: Callable[[str], None]) -> None:
        """Connect the device ``key`` to ``shown``, or take it out of it."""
        m = self.managers.get(shown)
        dev = self.found.get(shown, {}).get(key)
        if m is None or dev is None:
            done("USB: that device is gone")
            return
        connected = m.is_device_connected(dev)

        def finish(_m: Any, res: Any, _data: Any = None) -> None:
            try:
                if connected:
                    m.disconnect_device_finish(res)
                else:
                    m.connect_device_finish(res)
            except GLib.Error as err:
                done(f"USB: {err.message}")
            else:
                done(f"{dev.get_description(NAME_FORMAT)} "
                     f"{'taken out of' if connected else 'in'} {shown}")
            self.changed()
        if connected:
            m.disconnect_device_async(dev, None, finish, None)
        else:
            m.connect_device_async(dev, None, finish, None)
