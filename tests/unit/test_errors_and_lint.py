"""The error root, and ruff over the whole tree (as libvirt-dbus runs flake8 as a test)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from testlib import ROOT, need, run
from vmclient import errors


def test_messages_come_from_the_docstring_template():
    e = errors.VMOperationTimeout("win10", "pause", 2.0)
    assert str(e) == "VM 'win10': pause did not finish within 2.0 s"
    assert e.dbus_name == "org.vmclient.VMClient1.Error.Timeout"
    assert isinstance(e, errors.VMOperationFailed)


def test_remote_errors_map_back_to_exit_codes():
    assert errors.RemoteError(errors.PermissionDenied.dbus_name, "no").exit_code == 77
    assert errors.RemoteError("org.example.Unknown", "?").exit_code == errors.EXIT_ERROR


def test_one_exit_code_table_usage_is_not_bug(capsys):
    import pytest

    from vmclient.cli.main import main as vmclientctl
    codes = [v for k, v in vars(errors).items() if k.startswith("EXIT_")]
    assert len(codes) == len(set(codes)), "two meanings share one exit code"
    assert errors.EXIT_BUG not in (2, errors.EXIT_USAGE)
    with pytest.raises(SystemExit) as exc:
        vmclientctl(["no-such-group"])
    assert exc.value.code == errors.EXIT_USAGE  # argparse's own usage error: 64, not 2
    table = (ROOT / "python-services/docs/exit-codes.md").read_text()
    for code in codes:
        assert f"| {code} " in table, f"exit code {code} is not in docs/exit-codes.md"
    # the manual pages' copy (vmclient.manpage)
    assert {c for c, _ in errors.CODE_MEANINGS} == {*codes, 130}


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    need(ruff is not None, "ruff is not installed")
    r = run([ruff, "check", "python-services", "tests", "bench"], cwd=ROOT, timeout=None)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_is_clean():
    mypy = shutil.which("mypy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    need(mypy is not None, "mypy is not installed")
    r = run([mypy, "src"], cwd=ROOT / "python-services", timeout=None)
    assert r.returncode == 0, r.stdout + r.stderr


def test_journald_lines_carry_the_priority_and_no_timestamp():
    import logging

    from vmclient.log import JournalFormatter

    rec = logging.LogRecord("vmclient.x", logging.ERROR, __file__, 1, "VM %s: %s", ("a", "b"),
                            None)
    assert JournalFormatter().format(rec) == "<3>ERROR: VM a: b"
