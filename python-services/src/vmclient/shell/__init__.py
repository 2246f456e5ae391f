"""``vmclient-shell``: the host's user interface (docs/shell.md).

:mod:`state` is the pure core (which VM is shown, the switcher's order, zone
colours, the lock); :mod:`bus`, :mod:`spice` and :mod:`window` are thin GLib /
GTK adapters around it.  The shell never talks to libvirt: it asks
vmclient-provd over D-Bus for the VMs and for connections to their displays.
"""
