"""The first start's steps (pure core of the shell's first-start page)."""

from __future__ import annotations

import pytest

from vmclient.shell import firststart as fs


def test_the_steps_come_in_the_order_of_issue_15():
    s, seen = fs.FirstStart(), []
    while s.step != fs.Step.DONE:
        seen.append(s.step.value)
        s = fs.advance(s)
    assert seen == ["layout", "wifi", "code", "password", "install"]
    assert fs.advance(s).step == fs.Step.DONE


def test_escape_at_the_code_goes_back_to_the_network_and_nowhere_else_goes_back():
    """A cable that does not work, or a Wi-Fi skipped: the code cannot reach IT, and the
    person must get back to the network step (the page takes every key)."""
    code = fs.FirstStart(fs.Step.CODE, layout=2)
    assert fs.back(code) == fs.FirstStart(fs.Step.WIFI, layout=2)
    assert "Escape" in code.title
    for step in fs.ORDER:
        if step != fs.Step.CODE:
            assert fs.back(fs.FirstStart(step)).step == step


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


def test_a_laptop_without_a_finished_first_start_opens_it_unless_syncd_is_not_there():
    assert fs.resume_at(fs.ENROL_NONE) == fs.Step.LAYOUT
    assert fs.resume_at(fs.ENROL_UNKNOWN) is None  # no management agent: nothing to do


def test_a_laptop_enrolled_from_the_command_line_still_gets_its_password():
    """``vmclientctl enrol`` enrols without the shell: the seat's user has no password
    then, and the lock screen could never be unlocked.  The first start opens anyway
    (the layout the password is typed in, the network), skips IT's code and asks for
    the password."""
    S = fs.Step
    for e in (fs.ENROL_REQUESTED, fs.ENROL_ENROLLED):
        assert fs.resume_at(e) == S.LAYOUT
        s, seen = fs.FirstStart(), []
        while s.step != S.DONE:
            seen.append(s.step.value)
            s = fs.advance(s, e)
        assert seen == ["layout", "wifi", "password", "install"]
        assert fs.advance(fs.FirstStart(S.WIFI), e).step == S.PASSWORD  # Escape: cable
    # not enrolled: the code, as ever
    assert fs.advance(fs.FirstStart(S.WIFI), fs.ENROL_NONE).step == S.CODE
    assert fs.advance(fs.FirstStart(S.WIFI)).step == S.CODE


def test_a_password_set_some_other_way_is_syncds_own_error():
    from vmclient.manage.password import PasswordSetAlready
    assert PasswordSetAlready.dbus_name == fs.PASSWORD_SET_ALREADY


def test_the_layout_kept_for_the_next_session_is_one_line_of_weston_environment():
    assert fs.keyboard_text("de") == "XKB_DEFAULT_LAYOUT=de\n"
    for code, _shown in fs.LAYOUTS:
        assert fs.keyboard_text(code) == f"{fs.KEYBOARD_VARIABLE}={code}\n"
    for bad in ("", "xx", "de\nLD_PRELOAD=/x.so", "de us"):
        with pytest.raises(ValueError):
            fs.keyboard_text(bad)


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


def test_an_interrupted_first_start_reopens_where_it_was():
    S = fs.Step
    # not enrolled: where it was, up to the code
    assert fs.resume_at(fs.ENROL_NONE, S.WIFI) == S.WIFI
    assert fs.resume_at(fs.ENROL_NONE, S.CODE) == S.CODE
    assert fs.resume_at(fs.ENROL_NONE, S.PASSWORD) == S.CODE  # sent, but not enrolling now
    # after the code: at the password or the installs
    assert fs.resume_at(fs.ENROL_REQUESTED, S.PASSWORD) == S.PASSWORD
    assert fs.resume_at(fs.ENROL_REQUESTED, S.INSTALL) == S.INSTALL
    assert fs.resume_at(fs.ENROL_ENROLLED, S.INSTALL) == S.INSTALL
    # enrolled meanwhile without the shell (vmclientctl enrol): past the code
    assert fs.resume_at(fs.ENROL_ENROLLED, S.WIFI) == S.WIFI
    assert fs.resume_at(fs.ENROL_ENROLLED, S.CODE) == S.PASSWORD
    # finished: never again, whatever syncd says
    for e in (fs.ENROL_NONE, fs.ENROL_REQUESTED, fs.ENROL_ENROLLED):
        assert fs.resume_at(e, S.DONE) is None
    assert fs.resume_at(fs.ENROL_UNKNOWN, S.PASSWORD) is None


def test_what_is_saved_is_the_step_and_the_layout_and_anything_else_is_ignored():
    first = fs.FirstStart(fs.Step.PASSWORD, layout=2, first_password="secret 123")
    text = fs.saved_text(first)
    assert "secret" not in text  # never a password
    assert fs.parse_saved(text) == fs.FirstStart(fs.Step.PASSWORD, layout=2)
    for bad in ("", "[]", "{", '{"version": 2, "step": "wifi", "layout": "de"}',
                '{"version": 1, "step": "nowhere", "layout": "de"}',
                '{"version": 1, "step": "wifi", "layout": "xx"}',
                '{"version": 1, "step": "wifi"}'):
        assert fs.parse_saved(bad) is None, bad


def test_the_session_starts_again_only_for_a_layout_weston_did_not_start_with():
    assert fs.restart_needed("de", None) and fs.restart_needed("de", "us")
    assert not fs.restart_needed("us", None) and not fs.restart_needed("de", "de")


def test_a_code_it_refused_is_asked_again_with_its_reason():
    """syncd says IT refused the request (Enrolment 1 again, EnrolmentRefused its reason):
    from the password or the wait for IT, back to the code with IT's words; a password
    set meanwhile is not asked again."""
    S = fs.Step
    waiting = fs.FirstStart(S.INSTALL, 3)
    back = fs.refused(waiting, fs.ENROL_NONE, "wrong enrolment code")
    assert back is not None
    state, message = back
    assert (state.step, state.layout) == (S.CODE, 3)
    assert message == ("IT refused the code: wrong enrolment code. Type the code again, "
                       "or ask IT for a new one")
    assert fs.advance(state, fs.ENROL_REQUESTED).step == S.INSTALL  # its password is set
    typing = fs.FirstStart(S.PASSWORD, 1, first_password="secret 12")
    state, _ = fs.refused(typing, fs.ENROL_NONE, "enrolment code expired") or (None, "")
    assert state == fs.FirstStart(S.CODE, 1)  # the password not set yet: asked after
    assert fs.advance(state, fs.ENROL_REQUESTED).step == S.PASSWORD
    # no refusal, still waiting or enrolled, or not past the code: nothing changes
    assert fs.refused(waiting, fs.ENROL_NONE, "") is None
    assert fs.refused(waiting, fs.ENROL_REQUESTED, "wrong enrolment code") is None
    assert fs.refused(waiting, fs.ENROL_ENROLLED, "wrong enrolment code") is None
    assert fs.refused(fs.FirstStart(S.CODE), fs.ENROL_NONE, "wrong enrolment code") is None
    # the password step done normally marks it set
    assert fs.advance(fs.FirstStart(S.PASSWORD), fs.ENROL_REQUESTED).password_set
