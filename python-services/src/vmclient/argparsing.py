"""argparse with vmclient's exit codes: a usage error exits 64 (EX_USAGE), not 2.

argparse exits 2 on a bad command line; vmclient keeps one exit-code table
(:mod:`vmclient.errors`, docs/exit-codes.md) where usage is 64 for its own
checks too, so a script can tell "wrong arguments" from anything else.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .errors import EXIT_USAGE


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")
