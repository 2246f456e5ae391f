"""``vmclientctl enrol``, ``status`` and ``recovery-key``: remote management on this laptop
(root).

They work on the management state directly (``/var/lib/vmclient/manage``).
The repository is a local directory or ``sftp://user@host[:port]/path``
(:func:`vmclient.transport.open_store`): ``enrol`` delivers its request
through the enrolment drop box account (``--dropbox-key``, the key that ships
with the image); afterwards the laptop logs in with its own SSH key
(``keys/ssh_ed25519`` in the state directory, sent with the request).  The
server's host key is pinned by ``--known-hosts``; there is no trust on first use.
"""

from __future__ import annotations

import argparse
import base64
import time
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..store.remote import RemoteStore
from ..transport import close_store
from ..transport.localfs import LocalDirStore

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
    p.add_argument("--dropbox-key", help="SSH key of the enrolment drop box (sftp:// only)")
    _common(p)
    p.set_defaults(func=enrol, render=lambda r: f"enrolment requested as device {r['device']}"
                   "; it completes when IT has processed the request")
    s = sub.add_parser("status", help="enrolment, lease and time left")
    s.add_argument("--repository", default="", help="also fetch new orders from here")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _common(s)
    s.set_defaults(func=status, render=render_status)
    r = sub.add_parser("recovery-key", help="give the data partition a recovery key wrapped "
                       "for IT's escrow key, once enrolled (vmclient-recovery-key.service)")
    r.add_argument("--volume", default="/dev/disk/by-partlabel/vmdata",
                   help="the LUKS2 data partition")
    r.add_argument("--unlock", choices=("tpm2", "password"), default="tpm2",
                   help="how systemd-cryptenroll opens it: its TPM2 keyslot, or a passphrase "
                   "($PASSWORD, else asked)")
    _common(r)
    r.set_defaults(func=recovery_key, render=lambda r: r["result"])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", default=STATE_DIR, help="management state (root-only)")
    p.add_argument("--device-dir", default=DEVICE_DIR,
                   help="the device keys, shared with provisioning (root-only)")
    p.add_argument("--known-hosts", help="known_hosts pinning the server's host key (sftp://)")


def open_repository(where: str, key_file: str | Path | None = None,
                    known_hosts: str | None = None, state_dir: str | Path | None = None
                    ) -> RemoteStore:
    """``state_dir``: an sftp:// URL without ``user@`` is this device's own account, named
    from the device id in this management state."""
    from ..host.lease import device_account
    from ..transport import open_store
    account = device_account(Path(state_dir), where) if state_dir is not None else None
    return open_store(where, key_file=key_file, known_hosts=known_hosts, account=account)


def _agent(args: argparse.Namespace, repository: str, key_file: str | Path | None = None
           ) -> Any:
    from ..host.inventory import ManageConfig
    from ..host.keys import SSH_KEY
    from ..manage.agent import Agent
    from ..virt.libvirt import Hypervisor
    cfg = ManageConfig(state_dir=Path(args.state_dir), vm_keys_dir=Path(VM_KEYS_DIR),
                       images_dir=Path(IMAGES_DIR), device_dir=Path(args.device_dir))
    own = key_file is None  # the device's own account (not the enrolment drop box's)
    key_file = key_file or cfg.device_keys_dir / SSH_KEY
    remote = (open_repository(repository, key_file, args.known_hosts,
                              args.state_dir if own else None)
              if repository else LocalDirStore("/nonexistent"))
    return Agent(cfg, remote, Hypervisor())


async def enrol(args: argparse.Namespace) -> dict[str, Any]:
    try:
        admin = base64.b64decode(args.admin_key, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        admin = b""
    if len(admin) != 32:
        raise UsageError("--admin-key: not a base64 Ed25519 public key")
    if "://" in args.repository and not args.dropbox_key:
        raise UsageError("--dropbox-key: the enrolment drop box's SSH key is needed for an "
                         "sftp:// repository")
    agent = _agent(args, args.repository, args.dropbox_key)
    try:
        device = await agent.request_enrolment(admin, args.name, args.code)
    finally:
        await close_store(agent.remote)
    return {"device": device}


async def status(args: argparse.Namespace) -> dict[str, Any]:
    """Without --repository a pure read: the lease by trusted time is computed, not
    recorded (the manage agent in vmclient-syncd is the only writer of its state)."""
    from ..host.lease import read_lease

    agent = _agent(args, args.repository)
    try:
        if args.repository:
            if not await agent.complete_enrolment():
                await agent.enrolment_refused()  # IT's answer may be a refusal
            st: dict[str, Any] = agent.status()
        else:
            st = agent.status(read_lease(Path(args.state_dir)))
    finally:
        await close_store(agent.remote)
    return st


async def recovery_key(args: argparse.Namespace) -> dict[str, Any]:
    """Idempotent: nothing to do when the device has a recovery key for the current escrow
    key; the agent in vmclient-syncd uploads a new one at its next poll."""
    from ..manage import recovery
    enroller = recovery.Enroller(args.volume, ("--unlock-tpm2-device=auto",)
                                 if args.unlock == "tpm2" else ())
    return {"result": await recovery.escrow(Path(args.state_dir), Path(args.device_dir),
                                            enroller, int(time.time()))}


def render_status(st: dict[str, Any]) -> str:
    if not st["device"]:
        if st.get("refused"):
            return (f"not enrolled: IT refused the last request ({st['refused']}); "
                    "vmclientctl enrol … with the code IT gives you")
        return "not enrolled (vmclientctl enrol …)"
    if not st["enrolled"]:
        return f"device {st['device']}: enrolment requested, waiting for IT"
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(st["lease_until"]))
    return (f"device {st['device']}\nbusiness VMs: "
            f"{'allowed' if st['business_allowed'] else 'refused'} ({st['state']})\n"
            f"lease until {until}\nlast order {st['last_order']}, "
            f"{st['reports_pending']} report(s) to upload")
