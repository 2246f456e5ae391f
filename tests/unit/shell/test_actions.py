"""What the bar says after one of its actions returned."""

from __future__ import annotations

from vmclient.shell.actions import result_text


def test_sync_now_says_what_synced_and_why_others_did_not():
    assert result_text("sync", [[("work", "synced", "0000000002")]]) == "1 VM synced"
    assert result_text("sync", [[("work", "synced", "1"), ("home", "skipped", "offline")]]) \
        == "1 VM synced; home skipped (offline)"
    assert result_text("sync", [[]]) == "0 VMs synced"


def test_pause_and_resume_count_the_vms():
    assert result_text("pause", [["work", "home"]]) == "2 VMs paused"
    assert result_text("resume", [["work"]]) == "1 VM resumed"
    assert result_text("resume", [[]]) == "0 VMs resumed"
