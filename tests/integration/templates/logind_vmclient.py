"""python-dbusmock template: the stock logind plus what vmclient-powerd relies on.

Adds InhibitDelayMaxUSec, Docked, LidClosed, and a Suspend() that does what
logind does first: announce PrepareForSleep(true).  Tests count suspends with
the TestSuspendCount property and drive the wake-up themselves.

Inhibit() is the stock one plus a time stamp: TestReleasedAt holds the
CLOCK_MONOTONIC time (Python's ``time.monotonic()``, the same clock in every
process) at which the last inhibitor's fd was closed, so bench/power.py reads
when powerd let go instead of polling ListInhibitors in a loop that takes CPU
from the daemon it measures.  TestAnnounceSleep(b) emits PrepareForSleep(b)
with TestAnnouncedAt stamped on the same clock just before, so the bench
measures from logind's announcement, not from its own call to the mock.
"""

import os
import time

import dbus
import dbus.service
from dbusmock import mockobject
from dbusmock.templates import logind as _stock
from dbusmock.templates.logind import (  # noqa: F401  (methods the mock picks up)
    ListInhibitors,
    ListSessions,
    ListUsers,
)
from gi.repository import GLib


@dbus.service.method(_stock.MAIN_IFACE, in_signature="ssss", out_signature="h")
def Inhibit(self, what, who, why, mode):
    """The stock Inhibit (dbusmock.templates.logind), stamping TestReleasedAt on release."""
    if not hasattr(mockobject, "inhibitors"):
        mockobject.inhibitors = []
    fd_r, fd_w = os.pipe()
    inhibitor = (what, who, why, mode, 1000, 123456)
    mockobject.inhibitors.append(inhibitor)
    obj = self

    def dropped(fd, cond):
        released = time.monotonic()
        os.close(fd)
        mockobject.inhibitors.remove(inhibitor)
        obj.Set(_stock.MAIN_IFACE, "TestReleasedAt", dbus.Double(released))
        return False

    GLib.unix_fd_add_full(GLib.PRIORITY_HIGH, fd_r, GLib.IO_HUP, dropped)
    GLib.idle_add(os.close, fd_w)
    return fd_w

@dbus.service.method(_stock.MAIN_IFACE, in_signature="b", out_signature="")
def TestAnnounceSleep(self, start):
    """PrepareForSleep(start), with TestAnnouncedAt stamped right before it is sent."""
    self.Set(_stock.MAIN_IFACE, "TestAnnouncedAt", dbus.Double(time.monotonic()))
    self.EmitSignal(_stock.MAIN_IFACE, "PrepareForSleep", "b", [start])


BUS_NAME = _stock.BUS_NAME
MAIN_OBJ = _stock.MAIN_OBJ
MAIN_IFACE = _stock.MAIN_IFACE
SYSTEM_BUS = True


def load(mock, parameters):
    _stock.load(mock, parameters)
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary({
        "InhibitDelayMaxUSec": dbus.UInt64(parameters.get("InhibitDelayMaxUSec", 5_000_000)),
        "Docked": parameters.get("Docked", False),
        "LidClosed": False,
        "TestSuspendCount": dbus.UInt32(0),
        "TestReleasedAt": dbus.Double(0.0),
        "TestAnnouncedAt": dbus.Double(0.0),
    }, signature="sv"))
    mock.AddMethod(
        MAIN_IFACE, "Suspend", "b", "",
        "self.Set('%s', 'TestSuspendCount', dbus.UInt32(self.Get('%s', 'TestSuspendCount') + 1))\n"
        "self.EmitSignal('%s', 'PrepareForSleep', 'b', [True])" % (MAIN_IFACE, MAIN_IFACE,
                                                                 MAIN_IFACE))
