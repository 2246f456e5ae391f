"""Call a method of syncd's Management object with one string (run under setpriv as
another user): ``manage_client.py Enrol CODE`` or ``SetPassword PASSWORD``.  Prints
the outcome as one JSON line: ``{"reply": text}`` or ``{"error": name, "message": text}``."""

import json
import sys

import dbus

bus = dbus.SystemBus()
try:
    reply = bus.call_blocking("org.vmclient.VMClient1.Sync", "/org/vmclient/VMClient1/Management",
                              "org.vmclient.VMClient1.Management", sys.argv[1], "s", [sys.argv[2]],
                              timeout=120)
    print(json.dumps({"reply": str(reply)}))
except dbus.DBusException as exc:
    print(json.dumps({"error": exc.get_dbus_name(), "message": exc.get_dbus_message()}))
