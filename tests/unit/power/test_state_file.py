"""powerd's state file and held table: what it holds and why, written before the pauses,
read back."""

from __future__ import annotations

import json

from vmclient.power.holds import HeldTable
from vmclient.power.policy import Cause, Hold, HoldAction
from vmclient.power.statefile import HoldsFile


def test_round_trip_keeps_every_cause_and_the_paused_flag(tmp_path):
    f = HoldsFile(tmp_path)
    table = {"u1": Hold("a", HoldAction.PAUSE, frozenset({Cause.LID, Cause.USER})),
             "u2": Hold("b", HoldAction.SAVE, frozenset({Cause.BATTERY}), paused=True),
             "u3": Hold("c", HoldAction.PAUSE, frozenset())}  # its undo failed: still due
    f.save(table)
    assert f.load() == table
    assert json.loads(f.path.read_text())["held"][0]["causes"] == ["lid", "user"]
    assert not list(tmp_path.glob("*.tmp"))


def test_version_1_files_are_read_with_their_one_cause(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "held": [
        {"uuid": "u1", "name": "a", "action": "pause", "cause": "sleep"}]}))
    assert HoldsFile(tmp_path).load() == {"u1": Hold("a", HoldAction.PAUSE,
                                                     frozenset({Cause.SLEEP}))}


def test_malformed_entries_are_skipped_and_unknown_versions_ignored(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 2, "held": [
        {"uuid": "u1", "name": "a", "action": "pause", "causes": ["hibernate"]},
        {"uuid": "u2", "name": "b", "action": "fly", "causes": []},
        {"uuid": "u3", "name": "c", "action": "pause", "causes": "lid"},
        {"uuid": "u4", "name": "d", "action": "s3", "causes": ["sleep"]}]}))
    assert HoldsFile(tmp_path).load() == {"u4": Hold("d", HoldAction.S3, frozenset({Cause.SLEEP}))}
    assert caplog.text.count("ignoring a malformed entry") == 3
    path.write_text(json.dumps({"version": 3, "held": []}))
    assert HoldsFile(tmp_path).load() == {}
    assert "unknown format" in caplog.text


def test_a_broken_file_is_moved_aside(tmp_path):
    (tmp_path / "state.json").write_text("{half")
    assert HoldsFile(tmp_path).load() == {}
    assert list(tmp_path.glob("state.broken-*"))


def test_fsynced_only_while_it_holds_a_managed_save(tmp_path, monkeypatch):
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    f = HoldsFile(tmp_path)
    f.save({"u1": Hold("a", HoldAction.PAUSE, frozenset({Cause.SLEEP}))})
    assert synced == []  # a paused VM dies with the host: no crash to survive
    f.save({"u1": Hold("a", HoldAction.SAVE, frozenset({Cause.SLEEP}))})
    assert len(synced) == 2  # the file, then its directory
    assert f.load()["u1"].action == HoldAction.SAVE


def test_the_held_table_writes_each_change_and_a_batch_once(tmp_path, monkeypatch):
    f = HoldsFile(tmp_path)
    f.save({"u1": Hold("a", HoldAction.PAUSE, frozenset({Cause.SLEEP}))})
    told: list[None] = []
    t = HeldTable(f, lambda: told.append(None))
    assert t.holds == f.load()  # the table starts from the file
    writes: list[dict[str, Hold]] = []
    real = f.save
    monkeypatch.setattr(f, "save", lambda held: (writes.append(dict(held)), real(held)))
    b = {"u2": Hold("b", HoldAction.S3, frozenset({Cause.LID}))}
    t.set({**t.holds, **b})
    assert len(writes) == 1 and HoldsFile(tmp_path).load() == t.holds and len(told) == 1
    t.set(dict(t.holds))  # no change: no write
    with t.batch():
        t.forget(["u1"])
        t.refused["b"] = "the lease has expired"
        t.forget(["u2"])
        assert len(writes) == 1  # not yet
    assert len(writes) == 2 and HoldsFile(tmp_path).load() == {} and t.refused == {}
