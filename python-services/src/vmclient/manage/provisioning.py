"""The agent's installer: ``assign`` orders are carried out by ``vmclient-provd`` over D-Bus.

The same calls a person makes with ``vmclientctl vm install`` / ``vm start``:
``Install(recipe)`` (provd downloads, assembles and defines the VM, with its
progress in provd's properties) and, if the order says ``start``, ``Start(vm)``
(through the key gate, under the lease).  The recipe is checked first as the
admin tool checked it (:func:`.admin.assign_recipe`): a business VM from the
catalog, named as the order's ``vm``.
"""

from __future__ import annotations

from dbus_fast.aio import MessageBus

from ..cli.bus import call
from ..dbus import names
from .admin import assign_recipe


class ProvdInstaller:
    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus

    async def _call(self, member: str, signature: str, body: list[object]) -> list[object]:
        return await call(self.bus, names.PROVISION_PATH, names.PROVISION_IFACE, member,
                          signature, list(body), destination=names.PROVISION_BUS_NAME)

    async def assign(self, vm: str, untrusted_recipe: str, start: bool) -> str:
        recipe = assign_recipe(untrusted_recipe, f"(the recipe of the order for {vm})", vm)
        (name,) = await self._call("Install", "s", [untrusted_recipe])
        detail = f"{name} installed from image {recipe.image.catalog}"
        if start:
            await self._call("Start", "s", [name])
            detail += " and started"
        return detail
