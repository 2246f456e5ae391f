"""argparse with vmclient's exit codes, shell completion and a record of its subcommands.

argparse exits 2 on a bad command line; vmclient keeps one exit-code table
(:mod:`vmclient.errors`, docs/exit-codes.md) where usage is 64 for its own
checks too, so a script can tell "wrong arguments" from anything else.

Each parser remembers its subcommands (:attr:`ArgumentParser.subcommands`), so
the manual pages (:mod:`vmclient.manpage`) are made from the parsers themselves
through argparse's public API only.  Shell completion is argcomplete's
(:func:`complete`): the shells' hook (``data/bash-completion``) runs the command
with ``_ARGCOMPLETE`` set, and argcomplete (packaged with the completion files)
is imported only then.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from .errors import EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subcommands: dict[str, ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        # the subparsers' own class is this one (argparse's default: type(self)); the
        # action's ``choices`` (public) is the name -> parser mapping, filled as they come
        self.subcommands = action.choices
        return action


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request and exit; nothing when none was made."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # the completion files come with argcomplete: not installed here
        sys.exit(1)
    argcomplete.autocomplete(parser)
