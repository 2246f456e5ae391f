"""Fuzzing what a user types where a key is expected (``vmclientctl enrol --admin-key``)."""

from __future__ import annotations

import argparse
import asyncio

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.cli import manage
from vmclient.errors import UsageError

from .mutate import outcome


@given(st.text(max_size=60))
@example("é" * 44)  # ValueError: non-ASCII text is not base64
def test_admin_key_that_is_not_a_key(text: str) -> None:
    args = argparse.Namespace(admin_key=text, repository="/nonexistent", dropbox_key=None)
    err = outcome(asyncio.run, manage.enrol(args))
    assert isinstance(err, UsageError) and "--admin-key" in str(err)
