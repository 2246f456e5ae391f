"""What every vmclient daemon shares: systemd notification and signal handling."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def sd_notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``, ``STATUS=…``) to systemd.

    Returns False when not started by systemd with ``Type=notify``.  Implements
    the datagram protocol of sd_notify(3) so no libsystemd binding is needed.
    """
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(addr)
            sock.sendall(state.encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", addr, exc)
            return False
    return True


def install_stop_handlers(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """SIGTERM and SIGINT call ``stop`` once; a second signal is logged and ignored."""
    fired = False

    def handler(signame: str) -> None:
        nonlocal fired
        if fired:
            log.warning("%s received again while stopping; still stopping", signame)
            return
        fired = True
        log.info("%s received, stopping", signame)
        stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler, sig.name)


def main(argv: list[str] | None, prog: str, description: str, default_config: Path,
         run: Callable[[Path], Coroutine[Any, Any, None]]) -> int:
    """A daemon's ``main``: options, logging, the loop; exit codes from the error root."""
    from . import log as vlog
    from .errors import EXIT_BUG, VMClientError

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, default=default_config,
                        help="configuration file (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="verbose logging")
    args = parser.parse_args(argv)
    vlog.setup(args.debug)
    logger = logging.getLogger(f"vmclient.{prog.removeprefix('vmclient-')}")
    # Not asyncio.run(): libvirt may release its last handles through the
    # event implementation while the interpreter exits, so the loop stays open
    # (not running) instead of being closed under it.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(args.config))
        loop.run_until_complete(loop.shutdown_asyncgens())
    except VMClientError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception:
        logger.exception("%s failed", prog)
        return EXIT_BUG
    return 0
