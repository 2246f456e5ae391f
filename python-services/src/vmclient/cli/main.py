"""``vmclientctl``: the command line to the vmclient daemons over the system bus."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import traceback
from typing import Any

from .. import log
from ..argparsing import ArgumentParser, complete
from ..errors import EXIT_BUG, VMClientError
from . import manage, power, sync, vm


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="vmclientctl", description="control the vmclient daemons on "
                            "this laptop: VMs, sync, power and enrolment")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and a traceback with every error")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    power.add_parser(sub)
    vm.add_parser(sub)
    manage.add_parser(sub)
    sync.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    complete(parser)
    args = parser.parse_args(argv)
    log.setup(args.debug)
    logging.getLogger().setLevel(logging.DEBUG if args.debug else logging.WARNING)
    try:
        getattr(args, "check", lambda _a: None)(args)
        result: Any = asyncio.run(args.func(args))
    except VMClientError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"vmclientctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        print("vmclientctl: unexpected error (a bug; please report it):", file=sys.stderr)
        traceback.print_exc()
        return EXIT_BUG
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
    elif result is not None:
        print(args.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
