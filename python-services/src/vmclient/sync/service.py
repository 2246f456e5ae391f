"""The D-Bus object ``/org/vmclient/VMClient1/Sync`` of ``vmclient-syncd``.

Properties (anyone may read them: the bus policy allows ``Get``/``GetAll``):
the per-VM status in ``VMs``, the sync in flight (``State``, ``CurrentVM``,
``BytesDone``, ``BytesTotal``, ``Rate``) and the management lease
(``LeaseState``, ``LeaseRemaining``).  Changes are announced with
``PropertiesChanged``, progress at most every 0.2 s.  Every method call is
authorised first (:mod:`vmclient.dbus.guard`: root, group ``vmclient``, polkit
action ``org.vmclient.VMClient1.sync.manage``).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dbus_fast import Variant
from dbus_fast.aio import MessageBus
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_property, method

from ..dbus import names
from ..dbus.guard import Member, install_method_guard, name_out_args
from .status import SyncOutcome, SyncState, daemon_state

PROGRESS_INTERVAL = 0.2  # seconds between two progress announcements
Outcome = tuple[str, SyncOutcome, str]  # (vm, outcome, snapshot or reason)


@dataclass
class VMStatus:
    """What ``vmclientctl sync status`` shows of one VM."""

    name: str
    uuid: str = ""
    state: SyncState = SyncState.IDLE
    reason: str = ""  # why waiting or paused; the last error otherwise
    last_sync: int = 0  # unix time of the last successful sync (0: never)
    snapshot: str = ""  # its snapshot
    done: int = 0
    total: int = 0
    rate: float = 0.0  # bytes/s of the sync in flight
    next_run: int = 0  # unix time the schedule wants the next sync

    def to_dbus(self) -> dict[str, Variant]:
        return {"State": Variant("u", int(self.state)), "Reason": Variant("s", self.reason),
                "LastSync": Variant("x", self.last_sync),
                "LastSnapshot": Variant("s", self.snapshot),
                "BytesDone": Variant("t", self.done), "BytesTotal": Variant("t", self.total),
                "Rate": Variant("d", float(self.rate)), "NextRun": Variant("x", self.next_run)}


class SyncInterface(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(names.SYNC_IFACE)
        self.vms: dict[str, VMStatus] = {}
        self.current = ""
        self.lease_state, self.lease_remaining = "", -1
        self.host_update = ""  # a host release installed, waiting for a restart
        self.host_restart_at = 0  # when the laptop restarts into it by itself (0: the user)
        self.host_restart_waiting = ""  # in the window, what the restart waits for
        self._last_emit = 0.0

    # Methods: declared for introspection; calls arrive through the guard (daemon.py).
    @method()
    async def SyncNow(self, vm: s) -> a(sus):  # type: ignore[valid-type,name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def Verify(self, vm: s, snapshot: s) -> "(stt)":  # type: ignore[name-defined]  # noqa: F821, UP037
        raise NotImplementedError

    @method()
    async def ListSnapshots(self, vm: s) -> a(suxtsb):  # type: ignore[valid-type,name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def PostponeHostRestart(self, seconds: u) -> x:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    def introspect(self) -> Any:
        return name_out_args(super().introspect())

    @dbus_property(access=PropertyAccess.READ)
    def VMs(self) -> "a{sa{sv}}":  # type: ignore[valid-type]  # noqa: F722
        return {n: v.to_dbus() for n, v in sorted(self.vms.items())}

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return int(self._state())

    @dbus_property(access=PropertyAccess.READ)
    def CurrentVM(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.current

    @dbus_property(access=PropertyAccess.READ)
    def BytesDone(self) -> t:  # type: ignore[name-defined]  # noqa: F821
        return self._cur().done

    @dbus_property(access=PropertyAccess.READ)
    def BytesTotal(self) -> t:  # type: ignore[name-defined]  # noqa: F821
        return self._cur().total

    @dbus_property(access=PropertyAccess.READ)
    def Rate(self) -> d:  # type: ignore[name-defined]  # noqa: F821
        return float(self._cur().rate)

    @dbus_property(access=PropertyAccess.READ)
    def LeaseState(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.lease_state

    @dbus_property(access=PropertyAccess.READ)
    def LeaseRemaining(self) -> x:  # type: ignore[name-defined]  # noqa: F821
        return self.lease_remaining

    @dbus_property(access=PropertyAccess.READ)
    def HostUpdate(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.host_update

    @dbus_property(access=PropertyAccess.READ)
    def HostRestartAt(self) -> x:  # type: ignore[name-defined]  # noqa: F821
        return self.host_restart_at

    @dbus_property(access=PropertyAccess.READ)
    def HostRestartWaiting(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.host_restart_waiting

    def _cur(self) -> VMStatus:
        return self.vms.get(self.current) or VMStatus("")

    def _state(self) -> SyncState:
        return daemon_state({v.state for v in self.vms.values()})

    def values(self) -> dict[str, Any]:
        cur = self._cur()
        return {"VMs": {n: v.to_dbus() for n, v in sorted(self.vms.items())},
                "State": int(self._state()), "CurrentVM": self.current, "BytesDone": cur.done,
                "BytesTotal": cur.total, "Rate": float(cur.rate),
                "LeaseState": self.lease_state, "LeaseRemaining": self.lease_remaining,
                "HostUpdate": self.host_update, "HostRestartAt": self.host_restart_at,
                "HostRestartWaiting": self.host_restart_waiting}

    def changed(self, *, progress: bool = False) -> None:
        """Announce the properties; progress updates at most every 0.2 s."""
        now = time.monotonic()
        if progress and now - self._last_emit < PROGRESS_INTERVAL:
            return
        self._last_emit = now
        self.emit_properties_changed(self.values())


class ManagementInterface(ServiceInterface):
    """``/org/vmclient/VMClient1/Management``: enrolment (``Enrol``, polkit action
    ``org.vmclient.VMClient1.enrol``), the caller's first password (``SetPassword``,
    ``org.vmclient.VMClient1.first-password``) and the enrolment's state
    (``Enrolment``: 0 unknown, no management agent; 1 not enrolled; 2 requested,
    waiting for IT; 3 enrolled; ``EnrolmentRefused``: IT's reason for refusing the
    last request while not enrolled, else "")."""

    def __init__(self) -> None:
        super().__init__(names.MANAGE_IFACE)
        self.enrolment = 0
        self.refused = ""

    # Declared for introspection; calls arrive through the guard (daemon.py).
    @method()
    async def Enrol(self, code: s) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    @method()
    async def SetPassword(self, password: s) -> s:  # type: ignore[name-defined]  # noqa: F821
        raise NotImplementedError

    def introspect(self) -> Any:
        return name_out_args(super().introspect())

    @dbus_property(access=PropertyAccess.READ)
    def Enrolment(self) -> u:  # type: ignore[name-defined]  # noqa: F821
        return self.enrolment

    @dbus_property(access=PropertyAccess.READ)
    def EnrolmentRefused(self) -> s:  # type: ignore[name-defined]  # noqa: F821
        return self.refused

    def set(self, enrolment: int, refused: str = "") -> None:
        changed: dict[str, Any] = {}
        if refused != self.refused:
            self.refused = changed["EnrolmentRefused"] = refused
        if enrolment != self.enrolment:
            self.enrolment = changed["Enrolment"] = enrolment
        if changed:
            self.emit_properties_changed(changed)


class Progress:
    """A sync's ``progress(done, total)`` hook for VM ``v``: called in the sync's reader
    thread, for every chunk.  dbus-fast is the event loop's alone, and waking it for
    each chunk would cost more than the chunk: the loop gets ``iface.changed`` at most
    every :data:`PROGRESS_INTERVAL`, and at the end."""

    def __init__(self, iface: SyncInterface, v: VMStatus,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.iface, self.v, self.loop = iface, v, loop
        self.started = time.monotonic()
        self.handed = 0.0  # when progress was last handed to the event loop

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        elapsed = now - self.started
        v = self.v
        v.done, v.total, v.rate = done, total, done / elapsed if elapsed > 0 else 0.0
        if done < total and now - self.handed < PROGRESS_INTERVAL:
            return
        self.handed = now
        self.loop.call_soon_threadsafe(functools.partial(self.iface.changed,
                                                         progress=done < total))


class SyncBackend(Protocol):
    """What the Sync interface's methods ask (:class:`~vmclient.sync.daemon.Synchronizer`)."""

    async def sync_now(self, vm: str) -> list[Outcome]: ...
    async def verify(self, vm: str, snapshot: str) -> tuple[str, int, int]: ...
    async def snapshots(self, vm: str) -> list[tuple[str, int, int, int, str, bool]]: ...


def install_guard(bus: MessageBus, backend: SyncBackend,
                  postpone: Callable[[int], int]) -> None:
    """Authorise and dispatch SyncNow/Verify/ListSnapshots and, to ``postpone``,
    PostponeHostRestart (the host update the agent installed)."""
    async def sync_now(args: list[Any]) -> list[Any]:
        return [[[vm, int(outcome), detail] for vm, outcome, detail
                 in await backend.sync_now(str(args[0]))]]

    async def verify(args: list[Any]) -> list[Any]:
        return [list(await backend.verify(str(args[0]), str(args[1])))]

    async def snapshots(args: list[Any]) -> list[Any]:
        return [[list(r) for r in await backend.snapshots(str(args[0]))]]

    async def postpone_restart(args: list[Any]) -> list[Any]:
        return [postpone(int(args[0]))]

    install_method_guard(bus, names.SYNC_PATH, names.SYNC_IFACE,
                         names.POLKIT_ACTION_SYNC_MANAGE, {
                             "PostponeHostRestart": Member("postponing the host restart",
                                                           postpone_restart),
                             "SyncNow": Member("synchronising VMs", sync_now),
                             "Verify": Member("verifying a snapshot", verify),
                             "ListSnapshots": Member("listing snapshots",
                                                     snapshots)})
