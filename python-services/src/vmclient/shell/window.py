"""The shell's one full-screen window: the bar, the zone frame, the VMs, the lock page.

A thin GTK adapter around :mod:`.state`: it feeds the core the VM list (from vmclient-provd,
polled) and key presses, and shows what :func:`state.view` says.  Layout, top to bottom: the
bar (:mod:`.barview`, the zone's colour, the VM's name and zone), then the VM's picture
inside a frame of :data:`.barview.FRAME_PX` in the zone's colour.  Bar and frame are the
shell's own widgets beside the SPICE widget, never under it: no guest pixel reaches them.

Hotkeys are taken in the window's ``key-press-event`` handler, which GTK runs before the
focused SPICE widget sees the key; a hotkey is consumed there and never forwarded.  While
locked, every key goes to the lock page's password field (and none to a VM); the user's
password, checked by PAM (:mod:`.auth`), unlocks.  Locking holds the VMs' pause back until
the lock page is on the screen (:mod:`.locking`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gi

from ..dbus import names
from ..errors import RemoteError
from . import actions, audio, bar, barview, bus, firstsave, firststart, keys, state, usb, wifi
from .barview import Bar
from .firstpage import CSS as FIRST_START_CSS
from .firstpage import FirstStartPage
from .inflight import InFlight
from .installpage import CSS as INSTALL_CSS
from .installpage import InstallPage
from .locking import PauseDelay, when_on_screen
from .lockpage import CSS as LOCK_CSS
from .lockpage import LockPage
from .logind import SleepLock
from .netpage import CSS as NETWORKS_CSS
from .netpage import NetworksPage
from .overview import CSS as OVERVIEW_CSS
from .overview import Overview
from .props import PropsWatch
from .restorepage import CSS as RESTORE_CSS
from .restorepage import RestorePage
from .superkey import Hold
from .usbredir import UsbRedirect
from .vmpages import CSS as PAGES_CSS
from .vmpages import VMPages

gi.require_version("Gdk", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gdk, GLib, Gtk  # noqa: E402

log = logging.getLogger(__name__)

POLL_S = 2
SLOW_POLL_TICKS = 5  # assigned VMs and Wi-Fi every 10 s

class Shell:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.state = state.State()
        self.shown: state.View | None = None
        self.css = Gtk.CssProvider()
        Gtk.StyleContext.add_provider_for_screen(
            Gdk.Screen.get_default(), self.css, Gtk.STYLE_PROVIDER_PRIORITY_APPLICATION)

        self.window = Gtk.Window(title="vmclient")
        self.window.set_decorated(False)
        self.top = Gtk.Stack()
        desktop = Gtk.Box(orientation=Gtk.Orientation.VERTICAL)
        self.statusbar = Bar(self.act, lambda: self.run(state.Command.NETWORKS))
        self.usb = UsbRedirect(self._usb_text)
        self.muted: frozenset[str] = frozenset()  # VMs the bar muted
        self.pages = VMPages(conn, self.render, self.usb)
        self.displays = self.pages.displays
        desktop.pack_start(self.statusbar.widget, False, False, 0)
        desktop.pack_start(self.pages.widget, True, True, 0)
        self.lock_page = LockPage(lambda: self.state.locked and not self.state.asleep,
                                  self.unlock)
        self._lid_closed = False
        self.power_props: dict[str, Any] = {}
        self._listed_vms: list[bus.VM] = []
        self.overview = Overview(self._chosen)
        self.networks = NetworksPage(self.connect_wifi)
        self.install = InstallPage(conn, lambda: [v.name for v in self._listed_vms],
                                   lambda vm: self._started(vm, state.close_install),
                                   self.statusbar.action_message.set_text)
        self.restore = RestorePage(conn, lambda: [v.name for v in self._listed_vms],
                                   lambda vm: self._started(vm, state.close_restore),
                                   self.statusbar.action_message.set_text)
        # The first start (firststart.py): open while self.first_open.
        self.first = FirstStartPage(conn, self.connect_wifi, self._first_done,
                                    self.restart_session)
        self.first_open = False
        self._first_decided = False  # syncd told us whether this laptop is enrolled
        self.enrolment = firststart.ENROL_UNKNOWN
        self.enrolment_refused = ""  # syncd's EnrolmentRefused: IT's reason
        for name, widget in (("desktop", desktop), ("overview", self.overview.widget),
                             ("networks", self.networks.widget), ("install", self.install.widget),
                             ("restore", self.restore.widget), ("lock", self.lock_page.widget),
                             ("firststart", self.first.widget)):
            self.top.add_named(widget, name)
        self.window.add(self.top)
        self.hold = Hold()  # a Super press not yet sent to the VM (keys.py)
        self.window.connect("key-press-event", lambda _w, e: keys.pressed(self, e))
        self.window.connect("key-release-event", lambda _w, e: keys.released(self, e))
        self.window.connect("focus-out-event", lambda _w, _e: keys.focus_out(self))
        self.window.connect("destroy", lambda _w: self.close())
        self._poll: int | None = None
        self._ticks = 0
        self._listing, self._listing_assigned = InFlight(), InFlight()  # one call each
        self.sleep_lock = SleepLock(conn, self._before_sleep, self._woke)
        self.pause_delay = PauseDelay(conn)
        self.wifi = wifi.Wifi(conn, self._wifi)
        self.assigned: list[bus.AssignedVM] = []
        self.watches = [
            PropsWatch(conn, names.BUS_NAME, names.POWER_PATH, names.POWER_IFACE,
                       self._power),
            PropsWatch(conn, names.SYNC_BUS_NAME, names.SYNC_PATH, names.SYNC_IFACE,
                       self._sync),
            PropsWatch(conn, names.PROVISION_BUS_NAME, names.PROVISION_PATH,
                       names.PROVISION_IFACE, self._provisioning),
            PropsWatch(conn, names.SYNC_BUS_NAME, names.MANAGE_PATH, names.MANAGE_IFACE,
                       self._management)]

    # -- life cycle --------------------------------------------------------------

    def start(self) -> None:
        self.window.show_all()
        self.window.fullscreen()
        self.render()
        self.refresh()
        self._poll = GLib.timeout_add_seconds(POLL_S, self._tick)
        self.sleep_lock.start()
        self.pause_delay.start()
        for w in self.watches:
            w.start()

    def close(self) -> None:
        if self._poll is not None:
            GLib.source_remove(self._poll)
            self._poll = None
        self.overview.hide()
        self.sleep_lock.stop()
        self.pause_delay.stop()
        for w in self.watches:
            w.stop()
        self.pages.close()

    def _tick(self) -> bool:
        self._ticks += 1
        self.refresh(self._ticks % SLOW_POLL_TICKS == 0 or self.state.networks
                     or (self.first_open and self.first.state.step in (firststart.Step.WIFI,
                                                                       firststart.Step.INSTALL)))
        return True

    # -- the VM list ---------------------------------------------------------------

    def refresh(self, slow: bool = True) -> None:
        """The VMs (one call at a time: :mod:`.inflight`); with ``slow`` the rest."""
        self._listing.run(lambda finish: bus.list_vms(self.conn, finish), self._listed)
        if slow:
            self.refresh_slow()

    def refresh_slow(self) -> None:
        """What changes seldom: IT's assigned VMs, Wi-Fi (every tick while its page is open)."""
        self._listing_assigned.run(lambda f: bus.list_assigned(self.conn, f), self._assigned)
        self.wifi.refresh()

    def _assigned(self, rows: list[bus.AssignedVM] | None, err: RemoteError | None) -> None:
        if rows is None:
            log.debug("no assigned VMs from provd: %s", err)
        self.assigned = rows or []
        self._pending_text()

    def _pending_text(self) -> None:
        self.statusbar.pending.set_text(bar.pending_text(
            [(a.vm, a.outcome) for a in self.assigned], {v.name for v in self.state.vms}))
        self._feed_first()

    def _wifi(self, st: wifi.WifiState) -> None:
        self.statusbar.wifi.set_text(wifi.text(st))
        self.networks.show(st)
        if self.first_open:
            self.first.wifi(st)

    def act(self, name: str) -> None:
        """A bar action (sync now, pause, resume, shut down, the shown VM's pause and
        sound, the USB menu, the install page); not while locked."""
        if self.state.locked:
            return
        if name == "vm":  # the shown VM's pause or resume
            actions.run_for(self.conn, state.shown(self.state),
                            self.statusbar.action_message.set_text)
            return
        if name in ("install", "restore"):  # a page of the shell's
            (self.install if name == "install" else self.restore).open()
            self.state = (state.open_install if name == "install" else state.open_restore)(
                self.state)
            self.render()
            return
        if name == "sound" and self.state.current is not None:
            self.muted = audio.toggled(self.muted, self.state.current)
            self.render()
            return
        if name == "usb":
            shown = self.state.current
            self.statusbar.popup("usb", [(r.key, r.text, bool(r.action)) for r in
                                         usb.rows(self.usb.devices(shown), shown)],
                                 lambda key: self.usb.toggle(
                                     key, shown or "", self.statusbar.action_message.set_text))
            return
        self.statusbar.action_message.set_text(f"{actions.ACTIONS[name][0]}\u2026")
        actions.run(self.conn, name, self.statusbar.action_message.set_text)

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
        self.enrolment_refused = str(props.get("EnrolmentRefused", ""))[:300]
        if not self._first_decided:
            self._first_decided = True
            saved = firstsave.load()
            step = firststart.resume_at(self.enrolment, saved.step if saved else None)
            if step is not None:
                log.info("first start, at %s", step.value)
                self.first_open = True
                self.first.open_at(step, saved)
                self.render()
        self._feed_first()

    def _sync(self, props: dict[str, Any]) -> None:
        self.statusbar.sync.set_text(bar.sync_text(props))
        self.statusbar.buttons["later"].set_visible(bar.postpone_offered(props))

    def _provisioning(self, props: dict[str, Any]) -> None:
        self.statusbar.install.set_text(bar.install_text(props))
        self.install.show_progress(self.statusbar.install.get_text(),
                                   bar.install_fraction(props))
        self.restore.fills_changed(props.get("Fills"))
        self._feed_first()

    def _feed_first(self) -> None:
        if self.first_open:
            self.first.daemons(self.enrolment, self.statusbar.install.get_text(),
                               self.statusbar.pending.get_text(), len(self.state.vms),
                               self.enrolment_refused)

    @staticmethod
    def restart_session() -> None:
        """Quit: Weston (autolaunch watch=true) quits with it; systemd starts both again."""
        log.info("starting the desktop again")
        Gtk.main_quit()

    def _started(self, vm: str, close: Callable[[state.State], state.State]) -> None:
        """A VM installed from media (its installer) or restored from the datacenter runs:
        its page closes (``close``), the VM is shown as soon as the VM list has it."""
        self.state = close(state.expect(self.state, vm))
        self.refresh(slow=False)
        self.render()

    def _first_done(self) -> None:
        log.info("first start done")
        self.first_open = False
        self.render()

    def _listed(self, vms: list[bus.VM] | None, err: RemoteError | None) -> None:
        if vms is None:
            if str(err) != self.state.list_error:  # once per error, not every poll
                log.warning("cannot list the VMs: %s", err)
            self.pages.none_label.set_text(f"{state.LIST_FAILED}: {err}")
            self.state = state.list_failed(self.state, str(err))
            self.render()
            return
        self._listed_vms = vms
        self.state = state.listed(self.state)
        self.set_vms(self._entries())

    def _entries(self) -> list[state.VMEntry]:
        return [state.VMEntry(v.name, state.Zone.of(v.kind), v.state,
                              bar.vm_detail(v.name, v.state, self.power_props))
                for v in self._listed_vms]

    def set_vms(self, entries: list[state.VMEntry]) -> None:
        self.state = state.with_vms(self.state, entries)
        self._pending_text()
        self.pages.update(v.name for v in self.state.vms if v.showable)
        self.render()

    # -- input -----------------------------------------------------------------------

    def _chosen(self, vm: str) -> None:
        self.state = state.choose(self.state, vm)
        self.render()

    def run(self, cmd: state.Command) -> None:
        self.state = state.command(self.state, cmd)
        if cmd == state.Command.MENU and state.view(self.state).page in ("vm", "none"):
            self.statusbar.toggle_menu()  # open: its first item has the keys
        if self.state.networks:
            self.wifi.refresh()  # the list as it is now, not up to 10 s old
        self.render()

    def lock(self) -> None:
        """Lock; once the lock page is on the screen, powerd may pause the VMs."""
        self.state = state.lock(self.state)
        self.render()
        when_on_screen(self.window, self._lock_shown)

    def _lock_shown(self) -> None:
        if self.state.locked:  # not unlocked meanwhile
            self.pause_delay.want(False)

    def unlock(self) -> None:
        self.state = state.unlock(self.state)
        if not self.state.locked:
            self.pause_delay.want(True)  # a VM is shown again: a lid closing waits for the lock
        self.render()

    def _power(self, props: dict[str, Any]) -> None:
        """powerd's properties: the bar's power field, and the lid: closing it locks."""
        self.statusbar.power.set_text(bar.power_text(props))
        self.power_props = props
        self.set_vms(self._entries())  # why each VM is paused
        closed = props.get("LidState") == bar.LID_CLOSED
        if closed and not self._lid_closed:
            log.info("the lid is closed: locking the screen")
            self.lock()
        self._lid_closed = closed

    def _before_sleep(self, done: Any) -> None:
        """Lock, and call ``done`` (release the delay lock) once the lock page is shown."""
        self.state = state.sleep(self.state)
        self.render()

        def shown() -> None:
            self._lock_shown()
            done()
        when_on_screen(self.window, shown)

    def _woke(self) -> None:
        self.state = state.wake(self.state)
        self.render()

    # -- output --------------------------------------------------------------------

    def _usb_text(self) -> None:
        self.statusbar.set_button(
            "usb", usb.button_text(self.usb.devices(self.state.current), self.state.current))

    def render(self) -> None:
        v = state.view(self.state)
        self.pages.apply(self.state.current, self.state.locked, self.first_open, self.muted)
        self.statusbar.set_button("sound", audio.button_text(self.state.current, self.muted))
        self.statusbar.vm_button(actions.vm_action(state.shown(self.state)))
        if v.page not in ("vm", "none") or self.first_open:  # the bar is not on the screen
            self.statusbar.close_menu()
        if v != self.shown:
            css = (barview.css(v.colour) + LOCK_CSS + PAGES_CSS + OVERVIEW_CSS + NETWORKS_CSS
                   + FIRST_START_CSS + INSTALL_CSS + RESTORE_CSS)
            self.css.load_from_data(css.encode())
            self.statusbar.title.set_text(v.title)
            self.shown = v
            self._usb_text()  # the shown VM's devices
        if self.first_open and v.page != "lock":
            self.top.set_visible_child_name("firststart")
            self.overview.hide()
            self.first.focus()
            return
        self.top.set_visible_child_name(v.page if v.page in ("lock", "overview", "networks",
                                                             "install", "restore") else "desktop")
        if v.page == "overview":
            self.overview.show(self.state, self.displays)
        else:
            self.overview.hide()
        menu = self.statusbar.menu_open()  # its items have the keys until it closes
        if self.pages.show(v.vm, focus=v.page == "vm" and not menu) or menu:
            pass  # the keyboard is the VM's, or the bar's menu's
        elif v.page == "lock":
            self.lock_page.focus()
        elif v.page == "networks":
            self.networks.focus()
        elif v.page in ("install", "restore"):
            (self.install if v.page == "install" else self.restore).focus()
        else:
            self.window.set_focus(None)

    def current_display(self) -> Any:
        """The SPICE widget shown now (None: none)."""
        v = state.view(self.state)
        return self.pages.display_of(v.vm) if v.page == "vm" else None
