"""The agent's installer: ``assign`` orders are carried out by ``vmclient-provd`` over D-Bus.

The same calls a person makes with ``vmclientctl vm install`` / ``vm start``:
``Install(recipe)`` (provd downloads, assembles and defines the VM, with its
progress in provd's properties) and, if the order says ``start``, ``Start(vm)``
(through the key gate, under the lease).  The recipe is checked first as the
admin tool checked it (:func:`.admin.assign_recipe`): a business VM from the
catalog, named as the order's ``vm``.  A business VM of that name here already
is not installed again (the order ran before a crash, or IT assigned it twice):
the report says so, and it is started if the order says so (unless it runs, or its
QEMU is starting: :data:`STARTED`).

A ``rekey`` order with ``restore`` is carried out the same way.  When the order
starts the VM, ``RestoreStreamed(vm, "", from_device)`` (as ``vmclientctl vm restore
--stream``): the VM runs within seconds, from its memory image if the snapshot holds
one, while provd fills its disks from the datacenter in the background; the person
at the new laptop does not wait for every chunk.  With ``start = false`` nothing
runs to stream into: a full ``Restore(vm, "", from_device)`` (as ``vmclientctl vm
restore``), the VM left as it came back.  A VM of that name here already is not
restored again over it (the order ran before a crash).
"""

from __future__ import annotations

from typing import Any

from dbus_fast.aio import MessageBus

from ..dbus import names
from ..dbus.client import call
from ..errors import VMClientError
from .admin import assign_recipe

# provd's words (virt.domains.state_word) for a VM started already: "starting" while its
# QEMU starts.  A Start of it would only fail (libvirt: the domain is already active).
STARTED = frozenset({"running", "starting"})


class ProvdInstaller:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def _call(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        return await call(self.bus, names.PROVISION_PATH, names.PROVISION_IFACE, member,
                          signature, list(body), destination=names.PROVISION_BUS_NAME)

    async def assign(self, vm: str, untrusted_recipe: str, start: bool) -> str:
        """Install (unless a business VM of that name is here: an order executed again
        after a crash, or assigned twice) and start if asked; the report's detail."""
        recipe = assign_recipe(untrusted_recipe, f"(the recipe of the order for {vm})", vm)
        (rows,) = await self._call("List", "", [])
        here = {str(r[0]): list(r) for r in rows}
        if vm in here and here[vm][1] != "business":
            raise VMClientError(f"a private VM named {vm} exists here: not replaced")
        if vm in here:
            state = str(here[vm][2])
            detail = f"{vm} was installed already (image {here[vm][3]} v{here[vm][4]})"
        else:
            (name,) = await self._call("Install", "s", [untrusted_recipe])
            state, detail = "shutoff", f"{name} installed from image {recipe.image.catalog}"
        if start:
            detail += await self._start(vm, state)
        return detail

    async def _start(self, vm: str, state: str) -> str:
        """Start ``vm``, listed in ``state``, unless it is started already; what the
        report's detail adds."""
        if state in STARTED:
            return ""
        await self._call("Start", "s", [vm])
        return " and started"

    async def restore(self, vm: str, from_device: str, start: bool) -> str:
        """Restore ``vm`` from the latest snapshot (unless a VM of that name is here: an
        order executed again after a crash), streamed when it is to run; the report's
        detail."""
        (rows,) = await self._call("List", "", [])
        here = {str(r[0]): list(r) for r in rows}
        if vm in here and here[vm][1] != "business":
            raise VMClientError(f"a private VM named {vm} exists here: not replaced")
        if vm in here:
            state, detail = str(here[vm][2]), f"{vm} was restored already"
        elif start:  # it runs at once; provd fills its disks in the background
            await self._call("RestoreStreamed", "sss", [vm, "", from_device])
            return (f"{vm} restored from the latest snapshot of {from_device}, running "
                    "while its disks stream in")
        else:
            (state,) = await self._call("Restore", "sss", [vm, "", from_device])
            state = str(state)
            detail = f"{vm} restored from the latest snapshot of {from_device}"
            if state == "running":
                detail += " (running from its memory image)"
        if start:
            detail += await self._start(vm, state)
        return detail
