"""The form of IT's enrolment codes as syncd's ``Enrol`` checks it (pure)."""

from __future__ import annotations

import time

import pytest

from vmclient.manage.enrol import CodeBook, normalise
from vmclient.sync.enrolment import InvalidCode, check_code, dropbox_location


def test_a_code_as_it_issues_it_passes_in_any_case_with_or_without_dashes(tmp_path):
    code = CodeBook(tmp_path / "codes.json").issue("laptop", int(time.time()))
    assert check_code(code) == normalise(code)
    assert check_code(code.lower().replace("-", " ")) == normalise(code)


@pytest.mark.parametrize(("code", "says"), [
    ("ABCD-EFGH-JKLM-NPQ0", "'0'"),  # 0 and O, 1 and I are not in codes
    ("ABCD-EFGH-JKLM-NPQI", "'I'"),
    ("ABCD-EFGH", "has 8"),
    ("", "has 0"),
    ("ABCD-EFGH-JKLM-NPQR-S", "has 17"),
    ("ABCD\nEFGH-JKLM-NPQR", "'?'"),
])
def test_a_malformed_code_is_refused_saying_why_without_echoing_it(code, says):
    with pytest.raises(InvalidCode) as exc:
        check_code(code)
    assert says in str(exc.value)
    assert "ABCD" not in str(exc.value)
    assert exc.value.dbus_name == "org.vmclient.VMClient1.Error.InvalidCode"


def test_the_drop_box_is_the_repository_with_its_own_account():
    assert dropbox_location("sftp://dev-1@dc.example:2222/srv/repo", "vmc-enrol") == \
        "sftp://vmc-enrol@dc.example:2222/srv/repo"
    assert dropbox_location("sftp://dev-1@dc.example/repo", "vmc-enrol") == \
        "sftp://vmc-enrol@dc.example/repo"
