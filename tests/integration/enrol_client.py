"""Call syncd's ``Enrol(code)`` (run under setpriv as another user); print the outcome
as one JSON line: ``{"device": id}`` or ``{"error": name, "message": text}``."""

import json
import sys

import dbus

bus = dbus.SystemBus()
try:
    device = bus.call_blocking("org.vmclient.VMClient1.Sync", "/org/vmclient/VMClient1/Management",
                               "org.vmclient.VMClient1.Management", "Enrol", "s", [sys.argv[1]],
                               timeout=120)
    print(json.dumps({"device": str(device)}))
except dbus.DBusException as exc:
    print(json.dumps({"error": exc.get_dbus_name(), "message": exc.get_dbus_message()}))
