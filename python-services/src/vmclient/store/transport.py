"""Closing a store whatever its transport (the transports live in :mod:`vmclient.transport`)."""

from __future__ import annotations

from .remote import RemoteStore


async def close_store(store: RemoteStore) -> None:
    close = getattr(store, "close", None)
    if close is not None:
        await close()
