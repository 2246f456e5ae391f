"""powerd's state file and held table: what it holds and why, written before the pauses,
read back."""

from __future__ import annotations

import contextlib
import json

import pytest

from vmclient.power.holds import HeldTable
from vmclient.power.policy import Cause, Hold, HoldAction
from vmclient.power.statefile import HoldsFile

PAUSED = Hold("a", HoldAction.PAUSE, frozenset({Cause.SLEEP}))
SAVED = Hold("a", HoldAction.SAVE, frozenset({Cause.SHUTDOWN}), paused=True)


def files(tmp_path) -> HoldsFile:
    """The state directory's file and the runtime directory's (a tmpfs on the laptop)."""
    return HoldsFile(tmp_path / "state", tmp_path / "run")


def test_round_trip_keeps_every_cause_and_the_paused_flag(tmp_path):
    f = files(tmp_path)
    table = {"u1": Hold("a", HoldAction.PAUSE, frozenset({Cause.LID, Cause.USER})),
             "u2": Hold("b", HoldAction.SAVE, frozenset({Cause.BATTERY}), paused=True),
             "u3": Hold("c", HoldAction.PAUSE, frozenset())}  # its undo failed: still due
    f.save(table)
    assert files(tmp_path).load() == table
    assert json.loads(f.runtime_path.read_text())["held"][0]["causes"] == ["lid", "user"]
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_version_1_files_are_read_with_their_one_cause(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"version": 1, "held": [
        {"uuid": "u1", "name": "a", "action": "pause", "cause": "sleep"}]}))
    assert files(tmp_path).load() == {"u1": Hold("a", HoldAction.PAUSE,
                                                 frozenset({Cause.SLEEP}))}


def test_malformed_entries_are_skipped_and_unknown_versions_ignored(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / "state.json"
    path.write_text(json.dumps({"version": 2, "held": [
        {"uuid": "u1", "name": "a", "action": "pause", "causes": ["hibernate"]},
        {"uuid": "u2", "name": "b", "action": "fly", "causes": []},
        {"uuid": "u3", "name": "c", "action": "pause", "causes": "lid"},
        {"uuid": "u4", "name": "d", "action": "s3", "causes": ["sleep"]}]}))
    assert files(tmp_path).load() == {"u4": Hold("d", HoldAction.S3, frozenset({Cause.SLEEP}))}
    assert caplog.text.count("ignoring a malformed entry") == 3
    path.write_text(json.dumps({"version": 3, "held": []}))
    assert files(tmp_path).load() == {}
    assert "unknown format" in caplog.text


def test_a_broken_file_is_moved_aside(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text("{half")
    assert files(tmp_path).load() == {}
    assert list((tmp_path / "state").glob("state.broken-*"))


def test_pauses_go_to_the_runtime_directory_unsynced_and_saves_to_the_state_directory(
        tmp_path, monkeypatch):
    """A paused VM dies with the host, so does its record (a tmpfs on the laptop, no
    fsync): a pause writes no disk.  A saved VM outlives a reboot and only its record says
    to restore it: fsynced, file then directory."""
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    f = files(tmp_path)
    assert f.load() == {}
    f.save({"u1": PAUSED, "u2": Hold("b", HoldAction.S3, frozenset({Cause.LID}))})
    assert synced == [] and not f.path.exists()
    assert {i["uuid"] for i in json.loads(f.runtime_path.read_text())["held"]} == {"u1", "u2"}
    f.save({"u1": SAVED})
    assert len(synced) == 2  # the file, then its directory
    assert [i["uuid"] for i in json.loads(f.path.read_text())["held"]] == ["u1"]
    assert json.loads(f.runtime_path.read_text())["held"] == []
    synced.clear()
    saved = f.path.stat().st_mtime_ns
    f.save({"u1": SAVED, "u3": PAUSED})  # the saves did not change: their file is not written
    assert synced == [] and f.path.stat().st_mtime_ns == saved
    assert files(tmp_path).load() == {"u1": SAVED, "u3": PAUSED}


def test_pauses_an_older_daemon_kept_in_the_state_directory_are_moved_once(tmp_path):
    """An upgrade while the VMs are paused: the older daemon recorded its pauses with its
    saves; they are read and moved to the runtime directory at the next start."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({"version": 2, "held": [
        {"uuid": "u1", "name": "a", "action": "pause", "causes": ["sleep"], "paused": False},
        {"uuid": "u2", "name": "a", "action": "save", "causes": ["shutdown"], "paused": True}]}))
    f = files(tmp_path)
    assert f.load() == {"u1": PAUSED, "u2": SAVED}
    assert [i["uuid"] for i in json.loads(f.path.read_text())["held"]] == ["u2"]
    assert [i["uuid"] for i in json.loads(f.runtime_path.read_text())["held"]] == ["u1"]
    assert files(tmp_path).load() == {"u1": PAUSED, "u2": SAVED}


@pytest.mark.parametrize(("before", "after"), [(PAUSED, SAVED), (SAVED, PAUSED)],
                         ids=["paused-then-saved", "saved-then-found-paused"])
def test_a_record_changing_files_survives_a_kill_at_every_step(tmp_path, monkeypatch,
                                                               before, after):
    """A kill between the two files' writes leaves the record in one of them at least
    (the state directory's copy wins when it is in both; reconcile corrects it)."""
    import os

    for survive in range(3):  # the daemon dies after this many renames
        work = tmp_path / str(survive)
        f = files(work)
        f.load()
        f.save({"u1": before})
        renames = [0]
        real = os.replace

        def replace(src, dst, *, renames=renames, survive=survive, real=real):
            if renames[0] >= survive:
                raise OSError("killed")
            renames[0] += 1
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with contextlib.suppress(OSError):
            f.save({"u1": after})
        monkeypatch.setattr(os, "replace", real)
        loaded = files(work).load()
        assert loaded.get("u1") in (before, after), (survive, loaded)
        if survive >= 2:  # both written
            assert loaded == {"u1": after}


def test_the_held_table_writes_each_change_and_a_batch_once(tmp_path, monkeypatch):
    f = files(tmp_path)
    f.save({"u1": Hold("a", HoldAction.PAUSE, frozenset({Cause.SLEEP}))})
    told: list[None] = []
    t = HeldTable(f, lambda: told.append(None))
    assert t.holds == f.load()  # the table starts from the file
    writes: list[dict[str, Hold]] = []
    real = f.save
    monkeypatch.setattr(f, "save", lambda held: (writes.append(dict(held)), real(held)))
    b = {"u2": Hold("b", HoldAction.S3, frozenset({Cause.LID}))}
    t.set({**t.holds, **b})
    assert len(writes) == 1 and files(tmp_path).load() == t.holds and len(told) == 1
    t.set(dict(t.holds))  # no change: no write
    with t.batch():
        t.forget(["u1"])
        t.refused["b"] = "the lease has expired"
        t.forget(["u2"])
        assert len(writes) == 1  # not yet
    assert len(writes) == 2 and files(tmp_path).load() == {} and t.refused == {}
