"""Helpers shared by the store tests."""

from __future__ import annotations


def flip(data: bytes, pos: int) -> bytes:
    """``data`` with one bit of byte ``pos`` flipped."""
    return data[:pos] + bytes([data[pos] ^ 0x01]) + data[pos + 1:]
