"""The first start's steps (pure core of the shell's first-start page)."""

from __future__ import annotations

from vmclient.shell import firststart as fs


def test_the_steps_come_in_the_order_of_issue_15():
    s, seen = fs.FirstStart(), []
    while s.step != fs.Step.DONE:
        seen.append(s.step.value)
        s = fs.advance(s)
    assert seen == ["layout", "wifi", "code", "password", "install"]
    assert fs.advance(s).step == fs.Step.DONE


def test_the_layout_list_wraps_around():
    s = fs.move_layout(fs.FirstStart(), -1)
    assert fs.LAYOUTS[s.layout][0] == fs.LAYOUTS[-1][0]
    assert fs.move_layout(s, 1).layout == 0


def test_the_password_is_asked_twice_and_a_mismatch_starts_over():
    s = fs.FirstStart(fs.Step.PASSWORD)
    s, pw, msg = fs.password_typed(s, "")
    assert pw is None and msg == "Type a password"
    s, pw, _ = fs.password_typed(s, "secret pass")
    assert pw is None and "again" in s.title
    s, pw, msg = fs.password_typed(s, "other pass")
    assert pw is None and "differ" in msg and s.first_password is None
    s, _, _ = fs.password_typed(s, "secret pass")
    s, pw, _ = fs.password_typed(s, "secret pass")
    assert pw == "secret pass"
    assert fs.advance(s).first_password is None  # not kept past its step


def test_only_a_laptop_not_enrolled_opens_the_first_start():
    assert fs.resume_at(fs.ENROL_NONE) == fs.Step.LAYOUT
    for e in (fs.ENROL_UNKNOWN, fs.ENROL_REQUESTED, fs.ENROL_ENROLLED):
        assert fs.resume_at(e) is None


def test_the_install_step_says_what_it_waits_for_and_ends_when_the_vms_are_there():
    assert fs.install_text(fs.ENROL_REQUESTED, "", "") == \
        "Waiting for IT to accept this laptop\u2026"
    assert fs.install_text(fs.ENROL_ENROLLED, "Installing crm: downloading 45%",
                           "From IT: 1 VM to install") == "Installing crm: downloading 45%"
    assert fs.install_text(fs.ENROL_ENROLLED, "", "From IT: 1 VM to install") == \
        "From IT: 1 VM to install"
    assert not fs.finished(fs.ENROL_REQUESTED, "", "", 1)
    assert not fs.finished(fs.ENROL_ENROLLED, "Installing crm: defining", "", 1)
    assert not fs.finished(fs.ENROL_ENROLLED, "", "From IT: 1 VM to install", 0)
    assert not fs.finished(fs.ENROL_ENROLLED, "", "", 0)  # IT's order not here yet
    assert fs.finished(fs.ENROL_ENROLLED, "", "", 1)
