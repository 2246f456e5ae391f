"""python-dbusmock template: the stock logind plus what vmclient-powerd relies on.

Adds InhibitDelayMaxUSec, Docked, LidClosed, and a Suspend() that does what
logind does first: announce PrepareForSleep(true).  Tests count suspends with
the TestSuspendCount property and drive the wake-up themselves.
"""

import dbus
from dbusmock.templates import logind as _stock
from dbusmock.templates.logind import (  # noqa: F401  (methods the mock picks up)
    Inhibit,
    ListInhibitors,
    ListSessions,
    ListUsers,
)

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
    }, signature="sv"))
    mock.AddMethod(
        MAIN_IFACE, "Suspend", "b", "",
        "self.Set('%s', 'TestSuspendCount', dbus.UInt32(self.Get('%s', 'TestSuspendCount') + 1))\n"
        "self.EmitSignal('%s', 'PrepareForSleep', 'b', [True])" % (MAIN_IFACE, MAIN_IFACE,
                                                                 MAIN_IFACE))
