"""``vmclient-admin`` entitlement: a device's keys enrolled directly, an image assigned.

    vmclient-admin … enrol DEVICE --pubkey B64 --wrapping-key B64 --ssh-key-pub FILE|LINE
    vmclient-admin … assign IMAGE DEVICE [--recipe FILE [--start]]

``enrol`` with ``--code``/``--accept``/``--dropbox`` is :mod:`.fleet`'s.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from ..manage.admin import assign_recipe, issue_order
from ..store import crypto, layout
from ..store.documents import WrappedKey
from ..store.orders import DeviceRecord, check_device_name
from ..store.remote import RemoteStore
from ..store.repo import put_signed, put_wrapped_key
from ..transport import is_url
from . import fleet, images, serverscript
from .session import find_device, open_repo
from .sshd import check_public_key, confinement
from .text import info


def say(text: str) -> None:
    print(text, flush=True)


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("enrol", help="enrolment codes and requests, or record a device's keys "
                       "directly; prints its sshd confinement")
    s.add_argument("device", nargs="?",
                   help="a name for the device (e.g. its asset tag), with --pubkey …")
    s.add_argument("--pubkey", help="the device's Ed25519 signing key (base64)")
    s.add_argument("--wrapping-key", help="the device's X25519 key (base64)")
    s.add_argument("--ssh-key-pub",
                   help="the device's SSH public key: a file or an 'ssh-ed25519 AAAA…' line")
    fleet.add_enrol_options(s)
    s.add_argument("--server-repo", help="the repository's path on the storage server "
                   "(default: --repo if local, else the URL's path)")
    s.add_argument("--server-keys", default="/etc/ssh/vmclient-keys",
                   help="root-owned directory for the per-device authorized keys")
    s.add_argument("--server-script", metavar="FILE",
                   help="write the storage server's setup script (accounts, directories, "
                   "sshd Match blocks) to FILE, a new file; '-' prints it (default: a new "
                   f"file in KEY_DIR/{serverscript.SETUP_DIR}/)")
    s.set_defaults(func=cmd_enrol)

    s = sub.add_parser("assign", help="entitle a device to an image (wrap its content key)")
    s.add_argument("image")
    s.add_argument("device", help="device id (32 hex) or enrolled name")
    s.add_argument("--recipe", type=Path, help="also order the device to install this recipe")
    s.add_argument("--start", action="store_true", help="and to start the VM once installed")
    s.set_defaults(func=cmd_assign)


async def cmd_enrol(args: argparse.Namespace, remote: RemoteStore) -> None:
    if args.code or args.accept or args.dropbox:
        if args.device or args.pubkey or args.wrapping_key or args.ssh_key_pub:
            raise UsageError("enrol: --code/--accept/--dropbox take no device keys")
        return await fleet.cmd_enrol_code(args, remote)
    if not (args.device and args.pubkey and args.wrapping_key and args.ssh_key_pub):
        raise UsageError("enrol: give DEVICE --pubkey --wrapping-key --ssh-key-pub, or one of "
                         "--code NAME, --accept, --dropbox SSH_PUB")
    serverscript.check_target(args.server_script)
    k, _cfg, _catalog = await open_repo(args, remote)
    signing = decode_key(args.pubkey, "--pubkey")
    wrapping = decode_key(args.wrapping_key, "--wrapping-key")
    ssh_pub = read_text_or_file(args.ssh_key_pub)
    check_device_name(args.device)
    try:
        check_public_key(ssh_pub)
    except UsageError as exc:
        raise UsageError(f"--ssh-key-pub: {exc}") from None
    device = crypto.key_id(crypto.ed25519_public(signing))
    crypto.x25519_public(wrapping)
    rec = DeviceRecord(device, args.device, signing, wrapping, int(time.time()))
    await put_signed(remote, layout.device_record(device), k.admin, ("device", device),
                     rec.to_bytes(), exclusive=False)
    server_repo = args.server_repo or server_path(args.repo)
    conf = confinement(device, ssh_pub, server_repo, args.server_keys)
    now = int(time.time())
    say(f"enrolled {args.device} as device {device}; its repository URL: "
        f"sftp://{conf.account}@<server>/")
    where = serverscript.write(serverscript.render([(device, conf)], now), args.server_script,
                               k.dir, now)
    say(serverscript.summary(where, 1))


async def cmd_assign(args: argparse.Namespace, remote: RemoteStore) -> None:
    recipe = None  # checked as the laptop checks it, before anything is written
    if args.recipe is not None:
        text = read_recipe(args.recipe)
        recipe = assign_recipe(text, str(args.recipe), image=args.image).name, text.strip()
    k, _cfg, catalog = await open_repo(args, remote)
    if catalog.find(args.image) is None:
        raise UsageError(f"no image {args.image!r} in the catalog (serial {catalog.serial})")
    rec = await find_device(remote, k, args.device)
    content = await images.content_key(remote, args.image, k.admin, k.escrow, create=False)
    recipient = crypto.x25519_public(rec.wrapping_key)
    wrapped = WrappedKey.create(f"image:{args.image}", recipient, content)
    await put_wrapped_key(remote, layout.image_key(args.image, wrapped.recipient), k.admin,
                          wrapped)
    info(f"device {rec.name} ({rec.device}) may now read image {args.image}")
    if recipe is not None:
        vm, text = recipe
        order = await issue_order(remote, k.admin, rec.device, "assign",
                                  {"vm": vm, "recipe": text, "start": args.start},
                                  int(time.time()),
                                  numbers=k.orders)
        info(f"order {order.seq}: install {vm} on {rec.name}"
             + (" and start it" if args.start else ""))


# --- helpers ---------------------------------------------------------------------------------

def decode_key(text: str, option: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError(f"{option}: expected a base64 raw 32-byte public key")
    return raw


def server_path(repo: str) -> str:
    """The repository's path on the server: the URL's path, or the local directory."""
    if is_url(repo):
        return urlsplit(repo).path or "/"
    return str(Path(repo).resolve())


def read_recipe(path: Path) -> str:
    """The text of the recipe file ``path``; refused before anything is written."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--recipe {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--recipe {path}: cannot read it: {exc}") from exc


def read_text_or_file(value: str) -> str:
    """``value`` itself, or the contents of the file it names."""
    path = Path(value)
    try:
        return path.read_text().strip() if path.is_file() else value.strip()
    except OSError as exc:
        raise UsageError(f"{value}: {exc.strerror}") from exc
