"""What IT assigned to this laptop: the agent's record and ``vmclientctl vm install``'s view."""

from __future__ import annotations

from pathlib import Path

from vmclient.cli.vm import render_install
from vmclient.host import assigned
from vmclient.host.assigned import Assigned


def test_record_replace_forget(tmp_path: Path) -> None:
    assert assigned.load(tmp_path) == []
    a = Assigned("office", "office-img", 3, "failed", "provd is not available")
    assigned.record(tmp_path, a)
    assigned.record(tmp_path, Assigned("mail", "mail-img", 4, "done", "mail installed"))
    assigned.record(tmp_path, Assigned("office", "office-img", 5, "done", "office installed"))
    assert [(x.vm, x.order) for x in assigned.load(tmp_path)] == [("mail", 4), ("office", 5)]
    assert (tmp_path / assigned.FILE).stat().st_mode & 0o777 == 0o600
    assigned.forget(tmp_path, "office")
    assert [x.vm for x in assigned.load(tmp_path)] == ["mail"]


def test_a_damaged_file_shows_nothing_and_bad_entries_are_skipped(tmp_path: Path) -> None:
    (tmp_path / assigned.FILE).write_text("{not json")
    assert assigned.load(tmp_path) == []
    (tmp_path / assigned.FILE).write_text(
        '[{"vm": "../x", "image": "", "order": 1, "outcome": "done", "detail": ""},'
        ' {"vm": "ok", "image": "i", "order": "1", "outcome": "done", "detail": ""},'
        ' {"vm": "fine", "image": "i", "order": 2, "outcome": "done", "detail": "", "x": 1},'
        ' {"vm": "good", "image": "i", "order": 2, "outcome": "done", "detail": ""}]')
    assert [x.vm for x in assigned.load(tmp_path)] == ["good"]


def test_the_listing_says_what_is_here() -> None:
    rows = [{"name": "mail", "image": "mail-img", "order": 4, "outcome": "failed",
             "detail": "no space", "state": ""},
            {"name": "office", "image": "office-img", "order": 5, "outcome": "done",
             "detail": "", "state": "running"}]
    lines = render_install(rows).splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "ORDER", "HERE"]
    assert lines[1].split(None, 3) == ["mail", "mail-img", "4", "not installed: no space"]
    assert lines[2].split() == ["office", "office-img", "5", "running"]
    assert "assigned no VMs" in render_install([])
