"""vmclient-admin's modules stay small (STYLE: < ~400 lines), and the split kept the
commands where the parser finds them."""

from __future__ import annotations

from pathlib import Path

import vmclient.admin
from vmclient.admin.main import build_parser
from vmclient.manpage import walk

LIMIT = 400


def test_every_admin_module_is_under_the_size_limit() -> None:
    sizes = {p.name: len(p.read_text().splitlines())
             for p in Path(vmclient.admin.__file__).parent.glob("*.py")}
    assert not {n: s for n, s in sizes.items() if s > LIMIT}, sizes


def test_the_commands_of_main_and_entitle_still_have_their_handlers() -> None:
    root = build_parser()
    commands = {p.prog.split()[-1]: p for p in walk(root) if p is not root}
    for name in ("init", "publish", "list", "show", "enrol", "assign", "break-lock"):
        assert commands[name].get_default("func") is not None, name
