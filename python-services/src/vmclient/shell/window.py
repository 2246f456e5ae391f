"""The shell's one full-screen window: the bar, the zone frame, the VMs, the lock page.

A thin GTK adapter around :mod:`.state`: it feeds the core the VM list (from
vmclient-provd, polled) and key presses, and shows what :func:`state.view`
says.  Layout, top to bottom: the bar (:data:`BAR_PX` high, the zone's colour,
the VM's name and zone), then the VM's picture inside a frame of
:data:`FRAME_PX` in the zone's colour.  Bar and frame are the shell's own
widgets beside the SPICE widget, never under it: no guest pixel reaches them.

Hotkeys are taken in the window's ``key-press-event`` handler, which GTK runs
before the focused SPICE widget sees the key; a hotkey is consumed there and
never forwarded.  While locked, every key goes to the lock page's password
field (and none to a VM); the user's password, checked by PAM
(:mod:`.auth`), unlocks.
"""

from __future__ import annotations

import logging
from typing import Any

import gi

from ..dbus import names
from ..errors import RemoteError
from . import actions, bar, bus, firststart, state, wifi
from .firstpage import CSS as FIRST_START_CSS
from .firstpage import FirstStartPage
from .lockpage import LockPage
from .logind import SleepLock
from .netpage import CSS as NETWORKS_CSS
from .netpage import NetworksPage
from .overview import CSS as OVERVIEW_CSS
from .overview import Overview
from .props import PropsWatch
from .spice import VMDisplay

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
gi.require_version("Pango", "1.0")
from gi.repository import Gdk, GLib, Gtk, Pango  # noqa: E402

log = logging.getLogger(__name__)

BAR_PX = 28
FRAME_PX = 6
POLL_S = 2
SLOW_POLL_TICKS = 5  # assigned VMs and Wi-Fi every 10 s
LOCK_PAINT_BOUND_MS = 1000  # the most the lock page may hold the host's sleep back

_CSS = """
#bar, #frame {{ background-color: rgb({r}, {g}, {b}); }}
#bar label {{ color: white; font-weight: bold; }}
#lock {{ background-color: black; }}
#lock label {{ color: white; font-size: 24px; }}
#lock label#lockmsg {{ font-size: 16px; }}
#none {{ background-color: rgb(40, 40, 40); }}
#none label {{ color: white; }}
"""


def label(text: str = "", xalign: float = 0.5, wrap: bool = False) -> Any:
    """A label that never widens the window: a full-screen window larger than the
    screen is a protocol error the compositor disconnects the shell for."""
    lbl = Gtk.Label(label=text, xalign=xalign)
    if wrap:
        lbl.set_line_wrap(True)
        lbl.set_max_width_chars(80)
    else:
        lbl.set_ellipsize(Pango.EllipsizeMode.END)
    return lbl


def key_of(event: Any) -> state.Key:
    m = event.state
    return state.Key(
        name=Gdk.keyval_name(event.keyval) or "",
        super_=bool(m & (Gdk.ModifierType.SUPER_MASK | Gdk.ModifierType.MOD4_MASK)),
        shift=bool(m & Gdk.ModifierType.SHIFT_MASK),
        ctrl=bool(m & Gdk.ModifierType.CONTROL_MASK),
        alt=bool(m & Gdk.ModifierType.MOD1_MASK))


class Shell:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.state = state.State()
        self.displays: dict[str, VMDisplay] = {}
        self.shown: state.View | None = None
        self.css = Gtk.CssProvider()
        Gtk.StyleContext.add_provider_for_screen(
            Gdk.Screen.get_default(), self.css, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)

        self.window = Gtk.Window(title="vmclient")
        self.window.set_decorated(False)
        self.top = Gtk.Stack()
        desktop = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        self._build_bar()
        frame = Gtk.EventBox()
        frame.set_name("frame")
        self.vms = Gtk.Stack()
        for side in ("start", "end", "bottom"):
            getattr(self.vms, f"set_margin_{side}")(FRAME_PX)
        none = Gtk.EventBox()
        none.set_name("none")
        self.none_label = label("No VM running", wrap=True)
        none.add(self.none_label)
        self.vms.add_named(none, "none")
        frame.add(self.vms)
        desktop.pack_start(self.bar, False, False, 0)
        desktop.pack_start(frame, True, True, 0)
        self.lock_page = LockPage(lambda: self.state.locked and not self.state.asleep,
                                  self.unlock)
        self._lid_closed = False
        self.power_props: dict[str, Any] = {}
        self._listed_vms: list[bus.VM] = []
        self.overview = Overview(self._chosen)
        self.networks = NetworksPage(self.connect_wifi)
        # The first start (firststart.py): open while self.first_open.
        self.first = FirstStartPage(conn, self.connect_wifi, self._first_done)
        self.first_open = False
        self._first_decided = False  # syncd told us whether this laptop is enrolled
        self.enrolment = firststart.ENROL_UNKNOWN
        self.top.add_named(desktop, "desktop")
        self.top.add_named(self.overview.widget, "overview")
        self.top.add_named(self.networks.widget, "networks")
        self.top.add_named(self.lock_page.widget, "lock")
        self.top.add_named(self.first.widget, "firststart")
        self.window.add(self.top)
        self.window.connect("key-press-event", self._key)
        self.window.connect("key-release-event", self._key_release)
        self.window.connect("destroy", lambda _w: self.close())
        self._poll: int | None = None
        self._ticks = 0
        self._list_error = ""
        self.sleep_lock = SleepLock(conn, self._before_sleep, self._woke)
        self.wifi = wifi.Wifi(conn, self._wifi)
        self.assigned: list[bus.AssignedVM] = []
        self.watches = [
            PropsWatch(conn, names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE,
                       self._power),
            PropsWatch(conn, names.SYNC_BUS_NAME, names.SYNC_PATH, names.SYNC_IFACE,
                       lambda p: self.sync.set_text(bar.sync_text(p))),
            PropsWatch(conn, names.PROVISION_BUS_NAME, names.PROVISION_PATH,
                       names.PROVISION_IFACE, self._provisioning),
            PropsWatch(conn, names.SYNC_BUS_NAME, names.MANAGE_PATH, names.MANAGE_IFACE,
                       self._management)]

    def _build_bar(self) -> None:
        """The bar, left to right: the VM and its zone; Wi-Fi, IT's pending orders, sync,
        power."""
        self.bar = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=12)
        self.bar.set_name("bar")
        self.bar.set_size_request(-1, BAR_PX)
        self.title = label(xalign=0)
        self.title.set_margin_start(FRAME_PX)
        self.bar.pack_start(self.title, True, True, 0)
        self.buttons: dict[str, Any] = {}
        for name, spec in actions.ACTIONS.items():
            button = Gtk.Button(label=spec[0])
            button.set_relief(Gtk.ReliefStyle.NONE)
            button.set_can_focus(False)  # a key never goes to a button, only to a VM
            button.connect("clicked", lambda _b, name=name: self.act(name))
            self.buttons[name] = button
            self.bar.pack_start(button, False, False, 0)
        self.action_message = label(xalign=0)
        self.bar.pack_start(self.action_message, False, False, 0)
        self.power = label(xalign=1)
        self.power.set_margin_end(4 * FRAME_PX)  # the bar's last pixels stay its colour
        self.bar.pack_end(self.power, False, False, 0)
        self.sync = label(xalign=1)
        self.bar.pack_end(self.sync, False, False, 0)
        self.pending = label(xalign=1)
        self.bar.pack_end(self.pending, False, False, 0)
        self.install = label(xalign=1)
        self.bar.pack_end(self.install, False, False, 0)
        self.wifi_label = label(xalign=1)
        wifi_button = Gtk.EventBox()  # a click opens the Wi-Fi page
        wifi_button.add(self.wifi_label)
        wifi_button.connect("button-press-event", lambda *_a: self.run(state.Command.NETWORKS))
        self.bar.pack_end(wifi_button, False, False, 0)

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        self.window.show_all()
        self.window.fullscreen()
        self.render()
        self.refresh()
        self._poll = GLib.timeout_add_seconds(POLL_S, self._tick)
        self.sleep_lock.start()
        for w in self.watches:
            w.start()

    def close(self) -> None:
        if self._poll is not None:
            GLib.source_remove(self._poll)
            self._poll = None
        self.overview.hide()
        self.sleep_lock.stop()
        for w in self.watches:
            w.stop()
        for d in self.displays.values():
            d.close()
        self.displays.clear()

    def _tick(self) -> bool:
        self._ticks += 1
        bus.list_vms(self.conn, self._listed)
        if (self._ticks % SLOW_POLL_TICKS == 0 or self.state.networks
                or (self.first_open and self.first.state.step in (firststart.Step.WIFI,
                                                                  firststart.Step.INSTALL))):
            self.refresh_slow()
        return True

    # -- the VM list ---------------------------------------------------------------

    def refresh(self) -> None:
        bus.list_vms(self.conn, self._listed)
        self.refresh_slow()

    def refresh_slow(self) -> None:
        """What changes seldom: IT's assigned VMs, Wi-Fi (every tick while its page is open)."""
        bus.list_assigned(self.conn, self._assigned)
        self.wifi.refresh()

    def _assigned(self, rows: list[bus.AssignedVM] | None, err: RemoteError | None) -> None:
        if rows is None:
            log.debug("no assigned VMs from provd: %s", err)
        self.assigned = rows or []
        self._pending_text()

    def _pending_text(self) -> None:
        self.pending.set_text(bar.pending_text([(a.vm, a.outcome) for a in self.assigned],
                                               {v.name for v in self.state.vms}))
        self._feed_first()

    def _wifi(self, st: wifi.WifiState) -> None:
        self.wifi_label.set_text(wifi.text(st))
        self.networks.show(st)
        if self.first_open:
            self.first.wifi(st)

    def act(self, name: str) -> None:
        """A bar action (sync now, pause, resume, shut down); not while locked."""
        if self.state.locked:
            return
        self.action_message.set_text(f"{actions.ACTIONS[name][0]}\u2026")
        actions.run(self.conn, name, self.action_message.set_text)

    def connect_wifi(self, ssid: str, password: str) -> None:
        """Connect to a Wi-Fi network (the Wi-Fi page's Connect)."""
        self.wifi.connect(ssid, password, self.first.networks.answered if self.first_open
                          else self.networks.answered)

    # -- the first start -------------------------------------------------------------

    def _management(self, props: dict[str, Any]) -> None:
        """syncd's Management properties: a laptop not enrolled opens the first start."""
        if "Enrolment" not in props:
            return
        self.enrolment = int(props["Enrolment"])
        if not self._first_decided:
            self._first_decided = True
            if firststart.resume_at(self.enrolment) is not None:
                log.info("this laptop is not enrolled: first start")
                self.first_open = True
                self.first.render()
                self.render()
        self._feed_first()

    def _provisioning(self, props: dict[str, Any]) -> None:
        self.install.set_text(bar.install_text(props))
        self._feed_first()

    def _feed_first(self) -> None:
        if self.first_open:
            self.first.daemons(self.enrolment, self.install.get_text(), self.pending.get_text(),
                               len(self.state.vms))

    def _first_done(self) -> None:
        log.info("first start done")
        self.first_open = False
        self.render()

    def _listed(self, vms: list[bus.VM] | None, err: RemoteError | None) -> None:
        if vms is None:
            if str(err) != self._list_error:  # once per error, not every poll
                log.warning("cannot list the VMs: %s", err)
                self._list_error = str(err)
            self.none_label.set_text(f"Cannot list the VMs: {err}")
            return
        self._list_error = ""
        self._listed_vms = vms
        self.set_vms(self._entries())

    def _entries(self) -> list[state.VMEntry]:
        return [state.VMEntry(v.name, state.Zone.of(v.kind), v.state,
                              bar.vm_detail(v.name, v.state, self.power_props))
                for v in self._listed_vms]

    def set_vms(self, entries: list[state.VMEntry]) -> None:
        self.state = state.with_vms(self.state, entries)
        self._pending_text()
        showable = {v.name for v in self.state.vms if v.showable}
        for name in sorted(set(self.displays) - showable):
            d = self.displays.pop(name)
            self.vms.remove(d.widget)
            d.close()
        for name in sorted(showable - set(self.displays)):
            d = VMDisplay(self.conn, name, self._display_failed)
            self.displays[name] = d
            self.vms.add_named(d.widget, name)
            d.widget.show_all()
            d.connect()
        self.render()

    def _display_failed(self, vm: str, message: str) -> None:
        log.info("%s: display failed (%s); trying again with the next VM list", vm, message)
        d = self.displays.pop(vm, None)
        if d is not None:
            self.vms.remove(d.widget)
            d.close()
        self.render()

    # -- input -----------------------------------------------------------------------

    def _key(self, _widget: Any, event: Any) -> bool:
        key = key_of(event)
        if self.first_open and not self.state.locked:  # every key is the first start's
            self.first.key(event, key.name)
            return True
        cmd = state.hotkey(key)
        if cmd is not None:
            self.run(cmd)
            return True
        if self.state.networks:  # every key is the Wi-Fi page's
            if key.name == "Escape":
                self.state = state.close_networks(self.state)
                self.render()
            else:
                self.networks.key(event)
            return True
        if self.state.overview:  # every key is the overview's
            self.state = state.overview_key(self.state, key)
            self.render()
            return True
        if self.state.locked:  # no key reaches a VM: the password field's, or none
            if not self.state.asleep:
                self.lock_page.key(event)
            return True
        return False

    def _key_release(self, _widget: Any, event: Any) -> bool:
        return (self.state.locked or self.state.overview or self.state.networks
                or self.first_open or state.hotkey(key_of(event)) is not None)

    def _chosen(self, vm: str) -> None:
        self.state = state.choose(self.state, vm)
        self.render()

    def run(self, cmd: state.Command) -> None:
        self.state = state.command(self.state, cmd)
        if self.state.networks:
            self.wifi.refresh()  # the list as it is now, not up to 10 s old
        self.render()

    def lock(self) -> None:
        self.state = state.lock(self.state)
        self.render()

    def unlock(self) -> None:
        self.state = state.unlock(self.state)
        self.render()

    def _power(self, props: dict[str, Any]) -> None:
        """powerd's properties: the bar's power field, and the lid: closing it locks."""
        self.power.set_text(bar.power_text(props))
        self.power_props = props
        self.set_vms(self._entries())  # why each VM is paused
        closed = props.get("LidState") == bar.LID_CLOSED
        if closed and not self._lid_closed:
            log.info("the lid is closed: locking the screen")
            self.lock()
        self._lid_closed = closed

    def _before_sleep(self, done: Any) -> None:
        """Lock, and call ``done`` (release the delay lock) once the lock page is painted."""
        self.state = state.sleep(self.state)
        self.render()
        finished = False
        clock = self.window.get_frame_clock()
        handler = 0

        def finish(*_args: Any) -> bool:
            nonlocal finished
            if not finished:
                finished = True
                if clock is not None and handler:
                    clock.disconnect(handler)
                done()
            return False
        if clock is not None:
            handler = clock.connect("after-paint", finish)
        GLib.timeout_add(LOCK_PAINT_BOUND_MS, finish)
        self.window.queue_draw()

    def _woke(self) -> None:
        self.state = state.wake(self.state)
        self.render()

    # -- output --------------------------------------------------------------------

    def render(self) -> None:
        v = state.view(self.state)
        if v != self.shown:
            r, g, b = v.colour
            css = _CSS.format(r=r, g=g, b=b) + OVERVIEW_CSS + NETWORKS_CSS + FIRST_START_CSS
            self.css.load_from_data(css.encode())
            self.title.set_text(v.title)
            self.shown = v
        if self.first_open and v.page != "lock":
            self.top.set_visible_child_name("firststart")
            self.overview.hide()
            self.first.focus()
            return
        self.top.set_visible_child_name(v.page if v.page in ("lock", "overview", "networks")
                                        else "desktop")
        if v.page == "overview":
            self.overview.show(self.state, self.displays)
        else:
            self.overview.hide()
        page = v.vm if v.vm in self.displays else "none"
        self.vms.set_visible_child_name(page)
        if v.page == "vm" and v.vm in self.displays:
            self.displays[v.vm].focus()
        elif v.page == "lock":
            self.lock_page.focus()
        elif v.page == "networks":
            self.networks.focus()
        else:
            self.window.set_focus(None)

    def current_display(self) -> Any:
        """The SPICE widget shown now (None: none)."""
        v = state.view(self.state)
        d = self.displays.get(v.vm or "") if v.page == "vm" else None
        return d.display if d is not None else None
