"""First start (pure): the steps a new laptop's user goes through, in order.

keyboard layout → Wi-Fi → IT's enrolment code → the user's password → the
assigned VMs install.  The shell opens it when vmclient-syncd reports the
laptop not enrolled (``Management.Enrolment`` 1) and closes it when the laptop
is enrolled and nothing IT assigned is still to install.  The GTK page is
:mod:`.firstpage`; the calls it makes are :mod:`.setup`'s.
"""

from __future__ import annotations

import enum
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
    Step.CODE: "Type the enrolment code IT gave you, then Return",
    Step.PASSWORD: "Choose your password (at least 8 characters), then Return",
    Step.INSTALL: "Setting up your VMs",
    Step.DONE: "",
}


@dataclass(frozen=True)
class FirstStart:
    step: Step = Step.LAYOUT
    layout: int = 0  # index into LAYOUTS
    first_password: str | None = None  # typed once, waiting for the confirmation

    @property
    def title(self) -> str:
        if self.step == Step.PASSWORD and self.first_password is not None:
            return "Type the same password again, then Return"
        return TITLES[self.step]


def advance(fs: FirstStart) -> FirstStart:
    """The next step."""
    i = ORDER.index(fs.step)
    return replace(fs, step=ORDER[min(i + 1, len(ORDER) - 1)], first_password=None)


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


def resume_at(enrolment: int) -> Step | None:
    """Where a first start opens, from syncd's Enrolment: not enrolled → from the start;
    otherwise none (a requested enrolment is an interrupted first start: its user has
    seen it; the bar shows the rest)."""
    return Step.LAYOUT if enrolment == ENROL_NONE else None


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
