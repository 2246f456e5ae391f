"""``vmclientctl enrol`` and ``vmclientctl status``: remote management on this laptop (root).

They work on the management state directly (``/var/lib/vmclient/manage``);
the repository is a local directory until the SFTP transport (branch ``sftp``,
``store.transport.open_store``) is wired in :func:`open_repository`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store.localfs import LocalDirStore
from ..store.remote import RemoteStore

STATE_DIR = "/var/lib/vmclient/manage"
VM_KEYS_DIR = "/var/lib/vmclient/provision/keys"
DEVICE_DIR = "/var/lib/vmclient/device"  # provision.toml's device_dir: one set of device keys
IMAGES_DIR = "/var/lib/vmclient/images"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("enrol", help="enrol this laptop with a datacenter (one-time code)")
    p.add_argument("repository", help="the datacenter repository")
    p.add_argument("--admin-key", required=True, help="the admin's Ed25519 public key (base64)")
    p.add_argument("--code", required=True, help="the one-time code IT gave you")
    p.add_argument("--name", required=True, help="this laptop's name (e.g. its asset tag)")
    _common(p)
    p.set_defaults(func=enrol, render=lambda r: f"enrolment requested as device {r['device']}"
                   "; it completes when IT has processed the request")
    s = sub.add_parser("status", help="enrolment, lease and time left")
    s.add_argument("--repository", default="", help="also fetch new orders from here")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _common(s)
    s.set_defaults(func=status, render=render_status)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=STATE_DIR, help="management state (root-only)")


def open_repository(where: str) -> RemoteStore:
    if "://" in where:
        raise UsageError(f"{where}: only local repositories until the SFTP transport is in")
    return LocalDirStore(where)


def _agent(args: argparse.Namespace, repository: str) -> Any:
    from ..manage.agent import Agent
    from ..manage.inventory import ManageConfig
    from ..virt.libvirt import Hypervisor
    cfg = ManageConfig(state_dir=Path(args.state_dir), vm_keys_dir=Path(VM_KEYS_DIR),
                       images_dir=Path(IMAGES_DIR), device_dir=Path(DEVICE_DIR))
    remote = open_repository(repository) if repository else LocalDirStore("/nonexistent")
    return Agent(cfg, remote, Hypervisor())


async def enrol(args: argparse.Namespace) -> dict[str, Any]:
    try:
        admin = base64.b64decode(args.admin_key, validate=True)
    except binascii.Error:
        admin = b""
    if len(admin) != 32:
        raise UsageError("--admin-key: not a base64 Ed25519 public key")
    device = await _agent(args, args.repository).request_enrolment(admin, args.name, args.code)
    return {"device": device}


async def status(args: argparse.Namespace) -> dict[str, Any]:
    agent = _agent(args, args.repository)
    if args.repository:
        await agent.complete_enrolment()
    st: dict[str, Any] = agent.status()
    return st


def render_status(st: dict[str, Any]) -> str:
    if not st["device"]:
        return "not enrolled (vmclientctl enrol …)"
    if not st["enrolled"]:
        return f"device {st['device']}: enrolment requested, waiting for IT"
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(st["lease_until"]))
    return (f"device {st['device']}\nbusiness VMs: "
            f"{'allowed' if st['business_allowed'] else 'refused'} ({st['state']})\n"
            f"lease until {until}\nlast order {st['last_order']}, "
            f"{st['reports_pending']} report(s) to upload")
