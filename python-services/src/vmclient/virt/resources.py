"""The libvirt objects provisioning and the key gate make and remove: domain definitions,
secrets and networks.

A base of :class:`~vmclient.virt.hypervisor.Hypervisor`: each method is one
:meth:`call` (or :meth:`on_domain`) in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import libvirt

from ..errors import HypervisorError
from . import domains
from .domains import DomainInfo

log = logging.getLogger(__name__)

T = TypeVar("T")


class Resources:
    async def call(self, fn: Callable[[libvirt.virConnect], T], *, what: str,
                   vm: str | None = None, limit: float | None = None) -> T:
        raise NotImplementedError  # the Hypervisor's

    async def on_domain(self, uuid: str, what: str, op: Callable[[Any], T],
                        name: str | None = None) -> T:
        raise NotImplementedError  # the Hypervisor's

    # -- definitions -------------------------------------------------------------

    async def define(self, xml: str, name: str) -> str:
        """Define (or redefine) a persistent domain; returns its UUID."""
        return await self.call(lambda conn: conn.defineXML(xml).UUIDString(),
                               what="define", vm=name, limit=60)

    async def lookup_name(self, name: str) -> DomainInfo:
        return await self.call(lambda conn: domains.info(conn.lookupByName(name)),
                               what="look up", vm=name, limit=30)

    async def xml_desc(self, uuid: str, name: str | None = None) -> str:
        return await self.call(lambda conn: conn.lookupByUUIDString(uuid).XMLDesc(0),
                               what="read definition", vm=name or uuid, limit=30)

    async def destroy(self, uuid: str, name: str | None = None) -> None:
        """Power off at once (the guest gets no say)."""
        await self.on_domain(uuid, "power off", lambda d: d.destroy(), name)

    async def shutdown(self, uuid: str, name: str | None = None) -> None:
        """Ask the guest to shut down (ACPI); returns before it has."""
        await self.on_domain(uuid, "shut down", lambda d: d.shutdown(), name)

    async def undefine(self, uuid: str, name: str | None = None) -> None:
        """Remove a stopped domain's definition, its managed save and NVRAM."""
        flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                 | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        await self.on_domain(uuid, "undefine", lambda d: d.undefineFlags(flags), name)

    # -- secrets ---------------------------------------------------------------

    async def define_ephemeral_secret(self, uuid: str, value: bytes, what: str) -> None:
        """A private, ephemeral secret: never written to disk, never readable back."""
        xml = f"<secret ephemeral='yes' private='yes'><uuid>{uuid}</uuid></secret>"

        def op(conn: libvirt.virConnect) -> None:
            secret = conn.secretDefineXML(xml)
            try:
                secret.setValue(value)
            except libvirt.libvirtError:
                secret.undefine()
                raise
        await self.call(op, what=f"define the disk secret of {what}", limit=30)

    async def undefine_secret(self, uuid: str) -> bool:
        """Remove a secret; False if there was none."""
        def op(conn: libvirt.virConnect) -> bool:
            try:
                secret = conn.secretLookupByUUIDString(uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                    return False
                raise
            secret.undefine()
            return True
        return await self.call(op, what="undefine a secret", limit=30)

    @contextlib.asynccontextmanager
    async def ephemeral_secrets(self, uuids: Iterable[str], value: bytes, what: str
                                ) -> AsyncIterator[None]:
        """The secrets ``uuids`` defined private and ephemeral with ``value`` for the block
        only: every one defined is undefined after it, on errors too."""
        defined: list[str] = []
        try:
            for uuid in sorted(set(uuids)):
                await self.define_ephemeral_secret(uuid, value, what)
                defined.append(uuid)
            yield
        finally:
            for uuid in defined:
                try:
                    await self.undefine_secret(uuid)
                except HypervisorError as exc:
                    log.warning("the disk secret %s of %s stays defined until libvirtd "
                                "restarts: %s", uuid, what, exc)

    async def list_secrets(self) -> list[str]:
        return await self.call(lambda conn: [s.UUIDString() for s in conn.listAllSecrets(0)],
                               what="list secrets", limit=30)

    # -- networks --------------------------------------------------------------

    async def ensure_network(self, name: str, xml: str) -> bool:
        """Define, autostart and start the network ``name`` unless it exists; True if new."""
        def op(conn: libvirt.virConnect) -> bool:
            created = False
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                net, created = conn.networkDefineXML(xml), True
            if not net.isActive():
                net.create()
            if not net.autostart():
                net.setAutostart(1)
            return created
        return await self.call(op, what=f"set up network {name}", limit=60)

    async def network_xml(self, name: str) -> str | None:
        def op(conn: libvirt.virConnect) -> str | None:
            try:
                return str(conn.networkLookupByName(name).XMLDesc(0))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return None
                raise
        return await self.call(op, what=f"read network {name}", limit=30)

    async def remove_network(self, name: str) -> None:
        def op(conn: libvirt.virConnect) -> None:
            try:
                net = conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_NETWORK:
                    return
                raise
            if net.isActive():
                net.destroy()
            net.undefine()
        await self.call(op, what=f"remove network {name}", limit=60)
