"""systemd-localed for dbusmock (its stock templates have none): the X11 keyboard
properties and ``SetX11Keyboard``, which sets them as localed does (it also writes
``/etc/vconsole.conf`` and ``00-keyboard.conf``: not here)."""

import dbus

BUS_NAME = "org.freedesktop.locale1"
MAIN_OBJ = "/org/freedesktop/locale1"
MAIN_IFACE = "org.freedesktop.locale1"
SYSTEM_BUS = True


def load(mock, parameters):
    mock.AddProperties(MAIN_IFACE, dbus.Dictionary({
        "Locale": dbus.Array(["LANG=C.UTF-8"], signature="s"),
        "VConsoleKeymap": "us", "VConsoleKeymapToggle": "",
        "X11Layout": "us", "X11Model": "", "X11Variant": "", "X11Options": ""},
        signature="sv"))
    mock.AddMethod(MAIN_IFACE, "SetX11Keyboard", "ssssbb", "",
                   "self.Set('org.freedesktop.locale1', 'X11Layout', args[0]); "
                   "self.Set('org.freedesktop.locale1', 'X11Model', args[1]); "
                   "self.Set('org.freedesktop.locale1', 'X11Variant', args[2]); "
                   "self.Set('org.freedesktop.locale1', 'X11Options', args[3])")
