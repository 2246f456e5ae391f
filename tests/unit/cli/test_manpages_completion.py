"""The manual pages and shell completion the image installs (python-services/data/man,
data/bash-completion): made from the parsers, current, and completing through bash."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from testlib import DATA, need, run
from vmclient import manpage

MAN = DATA / "man" / "man1"
COMPLETION = DATA / "bash-completion"
COMMANDS = ("vmclientctl", "vmclient-admin")
REGENERATE = "regenerate: PYTHONPATH=src python -m vmclient.manpage data/man/man1 (in python-services)"


def test_every_command_and_subcommand_has_its_section_in_the_page() -> None:
    for name, build in manpage.parsers().items():
        page = (MAN / f"{name}.1").read_text()
        progs = [p.prog for p in manpage.walk(build())]
        assert len(progs) > 5
        missing = [p for p in progs if f'.SS "{p}"' not in page]
        assert not missing, f"{name}.1 lacks {missing}: {REGENERATE}"


@pytest.mark.skipif(sys.version_info[:2] != manpage.GENERATED_WITH,
                    reason="argparse lays help out differently on this Python")
def test_the_pages_are_what_the_parsers_make_now() -> None:
    made = manpage.pages()
    assert sorted(made) == sorted(p.name for p in MAN.iterdir())
    for file, text in made.items():
        assert (MAN / file).read_text() == text, f"{file} is out of date: {REGENERATE}"


def test_a_page_is_valid_roff() -> None:
    need(shutil.which("groff") is not None, "groff")
    for name in COMMANDS:
        r = run(["groff", "-man", "-Tutf8", "-ww", "-z", MAN / f"{name}.1"])
        assert r.returncode == 0 and not r.stderr, r.stderr


def test_the_hooks_are_argcomplete_s() -> None:
    argcomplete = pytest.importorskip("argcomplete")
    for name in COMMANDS:
        assert (COMPLETION / name).read_text() == argcomplete.shellcode([name], shell="bash")


def complete(tmp_path: Path, line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end), through the shipped hook."""
    need(shutil.which("bash") is not None, "bash")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    modules = {"vmclientctl": "vmclient.cli.main", "vmclient-admin": "vmclient.admin.main"}
    for name, module in modules.items():
        (bindir / name).write_text(f"#!/bin/sh\nexec {sys.executable} -m {module} \"$@\"\n")
        (bindir / name).chmod(0o755)
    command = line.split(maxsplit=1)[0]
    script = (f'source "{COMPLETION / command}"\n'
              'COMP_LINE="$1"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9\n'
              'read -r -a COMP_WORDS <<< "$COMP_LINE"\n'
              f'_python_argcomplete {command}\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {"PATH": f"{bindir}:{os.environ['PATH']}",
           "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    r = run(["bash", "-c", script, "bash", line], env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return [w.strip() for w in r.stdout.splitlines() if w.strip()]


def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    pytest.importorskip("argcomplete")
    assert complete(tmp_path, "vmclientctl vm re") == ["remove", "restore"]
    assert "--yes" in complete(tmp_path, "vmclientctl vm remove --")
    assert "order" in complete(tmp_path, "vmclient-admin or")


def test_a_vm_argument_completes_vm_names_never_files(tmp_path: Path) -> None:
    """No daemon answers here: no names, and not the files in the current directory
    (argcomplete's default).  The names from vmclient-provd: test_provisiond.py."""
    pytest.importorskip("argcomplete")
    (tmp_path / "notes.txt").write_text("")
    for line in ("vmclientctl vm start ", "vmclientctl vm remove --yes ",
                 "vmclientctl vm stop no"):
        assert "notes.txt" not in complete(tmp_path, line)
    assert complete(tmp_path, "vmclientctl vm start no") == []
