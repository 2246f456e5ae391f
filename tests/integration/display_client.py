"""A display client as the shell is one: OpenDisplay over the system bus, then SPICE.

Run as a child process (as another user, through setpriv) by test_display.py:
``python display_client.py VM``.  Prints one JSON line: ``{"error": NAME,
"message": TEXT}`` if vmclient-provd refused, else ``{"spice": EVENT}`` with
the name of the first event of the SPICE main channel on the fd it got
(``CHANNEL_OPENED``: the fd speaks SPICE, spice-gtk linked with the server).
"""

from __future__ import annotations

import json
import sys

import gi

gi.require_version("SpiceClientGLib", "2.0")
from gi.repository import GLib, GObject, SpiceClientGLib

from vmclient.errors import RemoteError
from vmclient.shell import bus


def main(vm: str) -> int:
    conn = bus.system_bus()
    try:
        fd = bus.open_display_sync(conn, vm)
    except RemoteError as exc:
        print(json.dumps({"error": exc.remote_name, "message": str(exc)}))
        return 0
    loop = GLib.MainLoop()
    seen: list[str] = []

    def on_event(_channel: object, event: object) -> None:
        seen.append(getattr(event, "value_name", str(event)))
        loop.quit()

    def on_channel(_session: object, channel: object) -> None:
        if isinstance(channel, SpiceClientGLib.MainChannel):
            GObject.Object.connect(channel, "channel-event", on_event)

    session = SpiceClientGLib.Session()
    GObject.Object.connect(session, "channel-new", on_channel)
    session.open_fd(fd)
    GLib.timeout_add_seconds(30, loop.quit)
    loop.run()
    print(json.dumps({"spice": seen[0] if seen else "timeout"}))
    session.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
