"""The device lock adapter: ``devices/<d>/lock`` held (and kept fresh) while a sync or a
prune of one of the device's VMs writes (repository-format.md §10)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator

from ..store import layout
from ..store.holding import holding, sweep_locked
from ..store.remote import LockToken, RemoteStore


def holder() -> str:
    return f"{socket.gethostname()} vmclient-sync pid {os.getpid()}"


@contextlib.asynccontextmanager
async def device_lock(remote: RemoteStore, dev: str, vm: str) -> AsyncIterator[LockToken]:
    """The device lock, kept fresh while the block runs and released after it (even when
    cancelled); then the temporary files a killed sync or prune left in ``vm``'s
    directory are removed (:func:`sweep_vm`).

    A lock left by a dead process of this host (this boot or an earlier one), or by
    this process when it no longer holds it (an unlock lost with the connection), is
    broken at once (:meth:`LockingMixin.lock`); any other waits for staleness.
    """
    token = await remote.lock(layout.device_lock(dev), holder())
    async with holding(remote, token):
        await sweep_vm(remote, dev, vm)
        yield token


async def sweep_vm(remote: RemoteStore, dev: str, vm: str) -> int:
    """Under the device lock: the temporary files a killed sync or prune left in the VM's
    directory (its chunk store and snapshots below, ``latest`` in it; not ``writers/``,
    which the admin writes)."""
    vm_dir = layout.vm_dir(dev, vm)
    return await sweep_locked(remote, layout.vm_store(dev, vm), f"{vm_dir}/snapshots",
                              f"{vm_dir}/keys", shallow=(vm_dir,))
