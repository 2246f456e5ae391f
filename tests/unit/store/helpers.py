"""Helpers shared by the store tests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def flip(data: bytes, pos: int) -> bytes:
    """``data`` with one bit of byte ``pos`` flipped."""
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
