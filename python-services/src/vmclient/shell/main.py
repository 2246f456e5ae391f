"""``vmclient-shell``: the full-screen shell, run by Weston's kiosk shell on the seat."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from .. import log as vlog
from ..errors import EXIT_ERROR

log = logging.getLogger("vmclient.shell")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vmclient-shell",
                                     description="vmclient's desktop: every VM on the screen")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    args = parser.parse_args(argv)
    vlog.setup(args.debug)
    try:
        import gi

        gi.require_version("Gtk", "3.0")
        from gi.repository import GLib, Gtk

        from . import bus
        from .idle import IdleHint
        from .window import Shell
    except (ImportError, ValueError) as exc:
        log.error("the shell needs GTK 3 and spice-gtk's introspection data: %s", exc)
        return EXIT_ERROR
    if not Gtk.init_check(sys.argv[:1])[0]:
        log.error("cannot open the display (is Weston running, WAYLAND_DISPLAY set?)")
        return EXIT_ERROR
    try:
        conn = bus.system_bus()
    except GLib.Error as exc:
        log.error("cannot reach the system bus: %s", exc.message)
        return EXIT_ERROR
    shell = Shell(conn)
    shell.window.connect("destroy", lambda _w: Gtk.main_quit())
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, Gtk.main_quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, Gtk.main_quit)
    shell.start()
    idle = IdleHint(conn)  # logind's IdleHint for the maintenance restart
    idle.start()
    Gtk.main()
    idle.stop()
    shell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
