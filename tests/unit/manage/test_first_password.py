"""The checks before syncd's ``SetPassword`` runs chpasswd (pure)."""

from __future__ import annotations

import pytest

from vmclient.errors import UsageError, VMClientError
from vmclient.manage.password import check_password, has_password


@pytest.mark.parametrize(("password", "says"), [
    ("seven77", "at least 8"), ("", "at least 8"), ("x" * 257, "at most 256"),
    ("good password\nroot:x", "line break"), ("good password\0", "NUL")])
def test_a_password_chpasswd_would_misread_or_too_short_is_refused_unechoed(password, says):
    with pytest.raises(UsageError) as exc:
        check_password(password)
    assert says in str(exc.value) and "password\n" not in str(exc.value)


def test_a_good_password_passes_as_it_is():
    assert check_password("  eight: chars ") == "  eight: chars "


@pytest.mark.parametrize(("line", "has"), [
    ("weston P 2026-12-06 0 99999 7 -1", True), ("weston L 2026-12-06 0 99999 7 -1", False),
    ("weston NP 2026-12-06 0 99999 7 -1", False)])
def test_passwd_status_tells_whether_a_password_is_set(line, has):
    assert has_password(line, "weston") is has


def test_an_answer_about_another_user_is_an_error():
    with pytest.raises(VMClientError):
        has_password("root P 2026-12-06 0 99999 7 -1", "weston")
