"""Manual pages made from the command-line parsers: ``python -m vmclient.manpage DIR``.

Each page is the parser's own ``--help`` for the command and for every
subcommand (argparse's public ``format_help``, at 80 columns), under the
headings man(7) expects, with the exit-code table of :mod:`vmclient.errors`.
The pages are kept in ``python-services/data/man/man1`` (the image installs
them; building them there would need the services' runtime dependencies on the
build host); a unit test fails when one is out of date with its parser.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import CODE_MEANINGS

WIDTH = "80"
# argparse's help layout changes between Python versions (3.13 shows "-k, --key KEY"
# where 3.11 shows "-k KEY, --key KEY"): the pages are made with this one
GENERATED_WITH = (3, 11)


def parsers() -> dict[str, Callable[[], argparse.ArgumentParser]]:
    from .admin.main import build_parser as admin
    from .cli.main import build_parser as ctl

    return {"vmclientctl": ctl, "vmclient-admin": admin}


def walk(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for sub in getattr(parser, "subcommands", {}).values():
        yield from walk(sub)


def _roff(text: str) -> str:
    """Plain text as roff: backslashes escaped, no line read as a request, other than
    ASCII as groff's Unicode escapes (\\[u2026] for …)."""
    text = "".join(c if c.isascii() else f"\\[u{ord(c):04X}]" for c in text.replace("\\", "\\e"))
    lines = []
    for line in text.splitlines():
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(lines)


@contextlib.contextmanager
def _columns() -> Iterator[None]:
    """argparse wraps at $COLUMNS: a fixed width, whatever the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def render(name: str, parser: argparse.ArgumentParser) -> str:
    """The man(7) page of ``parser`` (the command ``name``)."""
    summary = (parser.description or name).strip().splitlines()[0].rstrip(".")
    summary = summary.removeprefix(f"``{name}``: ")
    with _columns():
        usage = parser.format_usage().removeprefix("usage: ").strip()
        helps = [(p.prog, p.format_help().rstrip()) for p in walk(parser)]
    out = [f'.TH "{name.upper()}" "1" "" "vmclient" "vmclient manual"',
           ".SH NAME", f"{name} \\- {_roff(summary)}",
           ".SH SYNOPSIS", ".nf", _roff(usage), ".fi",
           ".SH DESCRIPTION", f"Every command and its options, as {name} --help and "
           f"{name} COMMAND --help show them.",
           ".SH COMMANDS"]
    for prog, text in helps:
        out += [f'.SS "{_roff(prog)}"', ".nf", _roff(text), ".fi"]
    out.append(".SH EXIT STATUS")
    for code, meaning in CODE_MEANINGS:
        out += [".TP", f".B {code}", _roff(meaning)]
    docs = "docs/exit-codes.md" + (", docs/admin-cli.md" if name == "vmclient-admin" else "")
    out += [".SH SEE ALSO", f"The vmclient documentation: {docs}."]
    return "\n".join(out) + "\n"


def pages() -> dict[str, str]:
    """``{"vmclientctl.1": text, …}`` for every command with a parser."""
    return {f"{name}.1": render(name, build()) for name, build in parsers().items()}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m vmclient.manpage DIR  (writes DIR/<command>.1)",
              file=sys.stderr)
        return 64
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for file, text in pages().items():
        (out / file).write_text(text, encoding="utf-8")
        print(out / file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
