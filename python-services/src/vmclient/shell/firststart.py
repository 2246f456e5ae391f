"""First start (pure): the steps a new laptop's user goes through, in order.

keyboard layout → Wi-Fi → IT's enrolment code → the user's password → the
assigned VMs install.  The shell opens it when vmclient-syncd reports the
laptop not enrolled (``Management.Enrolment`` 1) and closes it when the laptop
is enrolled and nothing IT assigned is still to install.  The GTK page is
:mod:`.firstpage`; the calls it makes are :mod:`.setup`'s.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, replace

# The Enrolment property of org.vmclient.VMClient1.Management.
ENROL_UNKNOWN, ENROL_NONE, ENROL_REQUESTED, ENROL_ENROLLED = 0, 1, 2, 3

# (XKB layout, what the list shows): a short list; XKB knows many more.
LAYOUTS: tuple[tuple[str, str], ...] = (
    ("us", "English (US)"), ("gb", "English (UK)"), ("de", "German"), ("fr", "French"),
    ("ch", "Swiss"), ("es", "Spanish"), ("it", "Italian"), ("nl", "Dutch"),
    ("se", "Swedish"), ("pl", "Polish"))


class Step(enum.Enum):
    LAYOUT = "layout"
    WIFI = "wifi"
    CODE = "code"
    PASSWORD = "password"
    INSTALL = "install"  # waiting for IT, then the assigned VMs' installs
    DONE = "done"


ORDER = (Step.LAYOUT, Step.WIFI, Step.CODE, Step.PASSWORD, Step.INSTALL, Step.DONE)

TITLES = {
    Step.LAYOUT: "Welcome. Choose your keyboard layout (arrows, Return)",
    Step.WIFI: "Connect to a network (Return connects; Escape: use the cable)",
    Step.CODE: "Type the enrolment code IT gave you, then Return (Escape: back to the network)",
    Step.PASSWORD: "Choose your password (at least 8 characters), then Return",
    Step.INSTALL: "Setting up your VMs",
    Step.DONE: "",
}


@dataclass(frozen=True)
class FirstStart:
    step: Step = Step.LAYOUT
    layout: int = 0  # index into LAYOUTS
    first_password: str | None = None  # typed once, waiting for the confirmation
    password_set: bool = False  # set in this run (a code typed again then skips it)

    @property
    def title(self) -> str:
        if self.step == Step.PASSWORD and self.first_password is not None:
            return "Type the same password again, then Return"
        return TITLES[self.step]


def advance(fs: FirstStart, enrolment: int = ENROL_NONE) -> FirstStart:
    """The next step; IT's code only while the laptop is not enrolled (enrolled from
    the command line, ``vmclientctl enrol``, it still needs the person's password)."""
    i = ORDER.index(fs.step)
    step = ORDER[min(i + 1, len(ORDER) - 1)]
    if step == Step.CODE and enrolment in (ENROL_REQUESTED, ENROL_ENROLLED):
        step = Step.PASSWORD
    if step == Step.PASSWORD and fs.password_set:
        step = Step.INSTALL
    return replace(fs, step=step, first_password=None,
                   password_set=fs.password_set or fs.step == Step.PASSWORD)


def refused(fs: FirstStart, enrolment: int, reason: str) -> tuple[FirstStart, str] | None:
    """IT refused the code sent (syncd: ``Enrolment`` 1 again, ``EnrolmentRefused`` its
    reason): back to the code, saying why; None while that is not so.  A password set
    meanwhile is not asked again."""
    if enrolment != ENROL_NONE or not reason or fs.step not in (Step.PASSWORD, Step.INSTALL):
        return None
    return (FirstStart(Step.CODE, fs.layout, password_set=fs.step == Step.INSTALL),
            f"IT refused the code: {reason}. Type the code again, or ask IT for a new one")


def back(fs: FirstStart) -> FirstStart:
    """Escape: from the code back to the network (a cable that does not work, a Wi-Fi
    skipped: the code cannot reach IT without one); anywhere else, where it is."""
    return replace(fs, step=Step.WIFI) if fs.step == Step.CODE else fs


def move_layout(fs: FirstStart, delta: int) -> FirstStart:
    return replace(fs, layout=(fs.layout + delta) % len(LAYOUTS))


def password_typed(fs: FirstStart, typed: str) -> tuple[FirstStart, str | None, str]:
    """(new state, the password to set or None, a message).  The password is asked
    twice; a mismatch starts over."""
    if fs.first_password is None:
        if not typed:
            return fs, None, "Type a password"
        return replace(fs, first_password=typed), None, ""
    if typed != fs.first_password:
        return replace(fs, first_password=None), None, "The two passwords differ: again"
    return fs, typed, ""


def resume_at(enrolment: int, saved: Step | None = None) -> Step | None:
    """Where a first start opens, from syncd's Enrolment and the step the shell saved
    (:func:`saved_text`; None: nothing saved):

    - not enrolled: where it was, up to the code (from the start if nothing was saved;
      at the code if the code was sent but syncd is not enrolling any more);
    - enrolment requested or done: where it was, but past the code (enrolled without
      the shell, e.g. by ``vmclientctl enrol``: from the start, for the layout the
      password is typed in, the network and the password the lock screen needs);
    - a first start that was finished never opens again."""
    if saved == Step.DONE or enrolment not in (ENROL_NONE, ENROL_REQUESTED, ENROL_ENROLLED):
        return None
    if enrolment == ENROL_NONE:
        if saved is None:
            return Step.LAYOUT
        return saved if ORDER.index(saved) <= ORDER.index(Step.CODE) else Step.CODE
    if saved is None:
        return Step.LAYOUT
    return Step.PASSWORD if saved == Step.CODE else saved


# syncd's SetPassword refusing because the account has a password (set some other
# way): the first start goes on, the lock screen takes that one.
PASSWORD_SET_ALREADY = "org.vmclient.VMClient1.Error.PasswordSetAlready"


SAVED_VERSION = 1


def saved_text(fs: FirstStart) -> str:
    """What the shell keeps of a first start across its restarts (no password)."""
    return json.dumps({"version": SAVED_VERSION, "step": fs.step.value,
                       "layout": LAYOUTS[fs.layout][0]})


def parse_saved(untrusted_text: str) -> FirstStart | None:
    """:func:`saved_text`'s text back; None for anything else (a first start then
    opens as if nothing was saved)."""
    try:
        untrusted = json.loads(untrusted_text)
        if not isinstance(untrusted, dict) or untrusted.get("version") != SAVED_VERSION:
            return None
        step = Step(untrusted.get("step"))
        layout = [code for code, _shown in LAYOUTS].index(str(untrusted.get("layout")))
    except (ValueError, TypeError):
        return None
    return FirstStart(step, layout)


KEYBOARD_VARIABLE = "XKB_DEFAULT_LAYOUT"


def keyboard_text(layout: str) -> str:
    """What the shell keeps of the chosen layout for the next session (the image's
    weston.service drop-in reads it into Weston's environment when it starts: the
    host's /etc is read-only, localed cannot keep it there)."""
    if layout not in [code for code, _shown in LAYOUTS]:
        raise ValueError(f"not a keyboard layout of the first start: {layout!r}")
    return f"{KEYBOARD_VARIABLE}={layout}\n"


def restart_needed(chosen: str, running: str | None) -> bool:
    """Whether the session must start again for the layout ``chosen`` to be the one the
    compositor uses: Weston takes its keymap only when it starts (``running``: the
    layout it started with, its ``XKB_DEFAULT_LAYOUT``; XKB's default is ``us``)."""
    return chosen != (running or "us")


def install_text(enrolment: int, install: str, pending: str) -> str:
    """The INSTALL step's line: IT's answer, then the bar's install and pending fields."""
    if enrolment == ENROL_REQUESTED:
        return "Waiting for IT to accept this laptop\u2026"
    if enrolment != ENROL_ENROLLED:
        return "Not enrolled"
    return install or pending or "Waiting for the VMs IT assigned\u2026"


def finished(enrolment: int, install: str, pending: str, vms: int) -> bool:
    """Done: enrolled, no install in progress, nothing IT assigned left to install, and
    at least one VM there (IT's assign order may not have arrived yet)."""
    return (enrolment == ENROL_ENROLLED and not install
            and "to install" not in pending and vms > 0)
