"""``vmclient-admin``: publish images into the datacenter repository, enrol devices.

    vmclient-admin [--repo REPO] [--key-dir DIR] [--quiet] COMMAND …
    vmclient-admin --repo REPO init [--key-dir DIR]
    vmclient-admin --repo REPO publish NAME IMAGE [--json]
    vmclient-admin --repo REPO list [--json] | show IMAGE|DEVICE [--json]
    vmclient-admin --repo REPO enrol DEVICE --pubkey B64 --wrapping-key B64 --ssh-key FILE|LINE
    vmclient-admin --repo REPO enrol --code NAME | --accept | --dropbox SSH_PUB
    vmclient-admin --repo REPO assign IMAGE DEVICE [--recipe FILE [--start]]
    vmclient-admin --repo REPO order DEVICE assign|unassign|renew|lock|unlock|wipe [k=v …]
    vmclient-admin --repo REPO order DEVICE cancel N [--dry-run]
    vmclient-admin --repo REPO devices [--json] | devices revoke DEVICE
    vmclient-admin --repo REPO reports DEVICE [--json]
    vmclient-admin --repo REPO rekey|restore VM --to DEVICE [--from DEVICE]
    vmclient-admin --repo REPO recovery-key DEVICE [--escrow-key FILE] [--json]
    vmclient-admin --repo REPO break-lock IMAGE | LOCK-PATH [--dry-run]
    vmclient-admin --repo REPO check [--read-data] | unpublish IMAGE [VERSION …]
    vmclient-admin --repo REPO forget IMAGE --keep-last N | prune IMAGE [--dry-run]
<<<<<<< HEAD
    vmclient-admin --repo REPO host publish BUNDLE --version V [--channel C [--rollout PCT]]
    vmclient-admin --repo REPO host channel stable|testing VERSION --rollout PCT
=======
    vmclient-admin --repo s3://… s3-identity issue DEVICE --out FILE | revoke DEVICE
>>>>>>> s8-s3

REPO is a local directory, ``sftp://user@host[:port]/path`` (then
``--ssh-key``/``--known-hosts`` give the admin's SSH key and the pinned host key) or
``s3://bucket/prefix?endpoint=URL`` (``--s3-credentials`` the admin's access key).
Without ``--repo``: ``$VMCLIENT_REPOSITORY``, else ``repo`` in the config file
(:mod:`.session`).  Exit codes: :mod:`vmclient.errors` (docs/exit-codes.md).

This module is the parser, the entry point and the repository's own commands; the
others are in :mod:`.entitle` (enrol, assign), :mod:`.fleet` (enrolment codes, orders,
devices, rekey, restore), :mod:`.maint` (check, forget, prune, unpublish),
:mod:`.s3iam` (a device's S3 identity) and :mod:`.show`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.metadata
import json
import secrets
import sys
import time
import traceback
from pathlib import Path

from ..argparsing import ArgumentParser, complete
from ..errors import EXIT_BUG, UsageError, VMClientError
from ..store import crypto, layout
from ..store.documents import CONFIG_ID, Catalog, RepoConfig
from ..store.errors import ObjectNotFound
from ..store.format import shown
from ..store.holding import break_lock
from ..store.hostformat import HOST_IMAGE
from ..store.locks import LockInfo, read_lock
from ..store.orders import DEVICE_ID_RE, DeviceRecord
from ..store.remote import RemoteStore, get_object
from ..store.repo import get_signed, put_catalog, put_signed
from ..transport import close_store, is_url, open_store
from . import entitle, fleet, hostupdates, images, keys, maint, recovery, s3iam, session, show
from .progress import progress_bar
from .session import open_repo
from .text import Output, human_size, info, utc

PROG = "vmclient-admin"


def version() -> str:
    try:
        return importlib.metadata.version("vmclient")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed as a package)"


def add_global_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.add_argument("--repo", help="local directory, sftp://user@host:port/path or "
                   "s3://bucket/prefix?endpoint=URL (default "
                   f"${session.ENV_REPOSITORY}, else repo in the config file)")
    p.add_argument("--config", help="config file (default "
                   "$XDG_CONFIG_HOME/vmclient/admin.toml): repo, key_dir, ssh_key, known_hosts, "
                   "s3_credentials")
    p.add_argument("--key-dir", help="the admin's offline key directory (default "
                   f"{session.DEFAULT_KEY_DIR})")
    p.add_argument("--ssh-key", help="SSH key for an sftp:// repository: a private key file, "
                   "or a public one naming a key ssh-agent holds (default: as OpenSSH, the "
                   "IdentityFile that exists and ssh-agent's keys)")
    p.add_argument("--known-hosts", help="known_hosts file pinning the server's host key")
    p.add_argument("--s3-credentials", metavar="FILE",
                   help="the admin's S3 access key for an s3:// repository (AWS "
                   "shared-credentials format, mode 0600; default: botocore's chain, e.g. "
                   "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    p.add_argument("--accept-rollback", action="store_true",
                   help="accept a repository whose catalog is older than the newest this admin "
                   "signed (restored from a backup): it is re-signed with the next serial")
    p.add_argument("--passphrase-file", metavar="FILE",
                   help="the admin keys' passphrase, for scripts (else "
                   f"${keys.ENV_PASSPHRASE}, else a prompt)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress, no confirmations; listings and errors only")
    p.add_argument("--debug", action="store_true", help="tracebacks for every error")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                       epilog="exit codes: 0 done, 1 failed, 64 usage, 65 repository data "
                       "failed a check, 66 no such repository, 69 unavailable (lock held), "
                       "70 bug, 78 configuration (key directory); docs/exit-codes.md")
    add_global_options(p)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("init", help="create a repository and the admin keys")
    s.add_argument("--chunk-size", type=int, default=64 << 10)
    s.add_argument("--no-passphrase", action="store_true",
                   help="keep new admin keys unencrypted (not recommended)")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("protect-keys", help="encrypt the admin keys of --key-dir under a "
                       "passphrase (no repository needed)")
    s.set_defaults(func=None)

    s = sub.add_parser("publish", help="publish a qcow2/raw image as the next version of NAME")
    s.add_argument("name")
    s.add_argument("image", type=Path)
    s.add_argument("--tmpdir", help="where qemu-img converts non-raw images (sparse)")
    s.add_argument("--json", action="store_true", help="the result as JSON")
    s.set_defaults(func=cmd_publish)

    s = sub.add_parser("list", help="published images and enrolled devices")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="one image (versions, who can read it) or one device "
                       "(state, orders and their outcome, images, VMs)")
    s.add_argument("what", metavar="IMAGE|DEVICE", help="image name, device name or id")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=show.cmd_show)
    entitle.add_parsers(sub)

    s = sub.add_parser("break-lock", help="delete a lock whose holder is gone (an image's "
                       "publish lock, or a path such as devices/ID/lock)")
    s.add_argument("lock", help="image name, or the lock's path in the repository")
    s.add_argument("--dry-run", action="store_true", help="show the holder, delete nothing")
    s.set_defaults(func=cmd_break_lock)
    fleet.add_parsers(sub)
    maint.add_parsers(sub)
    recovery.add_parsers(sub)
    hostupdates.add_parsers(sub)
    s3iam.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    complete(parser)
    args = parser.parse_args(argv)
    Output.quiet = args.quiet
    try:
        if args.command == "protect-keys":
            session.resolve(args, need_repo=False)
            protect_keys(args)
            return 0
        session.resolve(args)
        asyncio.run(run(args))
    except VMClientError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{PROG}: {shown(str(exc))}", file=sys.stderr)  # it may quote the repository
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception:
        print(f"{PROG}: unexpected error (a bug; please report it):", file=sys.stderr)
        traceback.print_exc()
        return EXIT_BUG
    return 0


async def run(args: argparse.Namespace) -> None:
    remote = open_store(args.repo, key_file=args.ssh_key, known_hosts=args.known_hosts,
                        agent=args.ssh_agent, file_mode=0o644,
                        s3_credentials=getattr(args, "s3_credentials", None))
    try:
        await args.func(args, remote)
    finally:
        await close_store(remote)


def say(text: str) -> None:
    print(text, flush=True)


# --- commands --------------------------------------------------------------------------------

async def cmd_init(args: argparse.Namespace, remote: RemoteStore) -> None:
    if not is_url(args.repo):
        keys.check_outside(args.key_dir, Path(args.repo))
    try:
        await remote.get(layout.CONFIG, 0, 1)
        raise UsageError(f"{args.repo} already holds a repository (config exists)")
    except ObjectNotFound:
        pass
    check_conditions = getattr(remote, "check_conditions", None)
    if check_conditions is not None:  # S3: a store that ignores If-None-Match is refused
        await check_conditions("init-probe")
    if (args.key_dir / keys.ADMIN_KEY).exists():
        k = keys.load(args.key_dir, session.passphrase(args))
    else:
        k = keys.create(args.key_dir, None if args.no_passphrase else
                        session.new_passphrase(args, confirm=True))
    now = int(time.time())
    cfg = RepoConfig(repository=secrets.token_hex(16), created=now, chunk_size=args.chunk_size,
                     admin_key=crypto.raw_public(k.admin.public_key()),
                     escrow_key=crypto.raw_public(k.escrow.public_key()))
    RepoConfig.parse(cfg.to_bytes(), layout.CONFIG)  # the checks a reader applies
    await put_signed(remote, layout.CONFIG, k.admin, ("config", CONFIG_ID), cfg.to_bytes())
    await put_catalog(remote, k.admin, Catalog(cfg.repository, 1, now, {}))
    k.record_serial(cfg.repository, 1)
    say(f"repository {cfg.repository} initialised at {args.repo}")
    say(f"admin keys: {args.key_dir} (keep offline)")
    say(f"admin public key (pin on every laptop): {b64(cfg.admin_key)}")
    say(f"IMPORTANT: no VM can be restored without the escrow key {args.key_dir / keys.ESCROW_KEY}"
        ": copy it now to offline storage (an encrypted USB key in a safe), and keep the "
        "copy apart from this machine")


async def cmd_publish(args: argparse.Namespace, remote: RemoteStore) -> None:
    if args.name == HOST_IMAGE:
        raise UsageError(f"image name {HOST_IMAGE!r} is reserved for host update bundles "
                         "(`vmclient-admin host publish`)")
    k, cfg, catalog = await open_repo(args, remote)
    check_file(args.image)
    images.check_image(args.image)
    with progress_bar(f"publish {args.name}") as bar:
        done, new = await images.publish(remote, cfg, catalog, args.name, args.image, k.admin,
                                         k.escrow, tmpdir=args.tmpdir, progress=bar.advance,
                                         on_size=bar.total, on_convert=bar.converting)
    k.record_serial(cfg.repository, new.serial)
    up = done.upload
    if args.json:
        say(json.dumps({"image": done.name, "version": done.version, "size": done.size,
                        "serial": done.serial, "new_chunks": up.chunks, "packs": up.packs,
                        "uploaded": up.bytes, "damaged": done.damaged}, sort_keys=True))
        return
    info(f"published {done.name} version {done.version}: {human_size(done.size)} disk, "
         f"{up.chunks} new chunks in {up.packs} packs ({human_size(up.bytes)} uploaded); "
         f"catalog serial {done.serial}")
    if done.damaged:
        info(f"{done.damaged} stored chunks it reuses were damaged: uploaded again, their "
            "packs replaced")


async def cmd_break_lock(args: argparse.Namespace, remote: RemoteStore) -> None:
    path = args.lock if "/" in args.lock or args.lock == layout.REPOSITORY_LOCK else \
        layout.image_lock(args.lock)
    if path.rsplit("/", 1)[-1] != "lock":
        raise UsageError(f"{args.lock!r} is neither an image name nor a lock's path "
                         "(images/NAME/lock, devices/ID/lock, lock)")
    if args.dry_run:
        try:
            held = read_lock(await get_object(remote, path, "lock", path)) or \
                LockInfo("(not a lock document)", 0, 0, "")
        except ObjectNotFound:
            held = None
        if held is None:
            say(f"{path}: not locked")
        else:
            say(f"dry run: would break the lock of {shown(held.holder)} on {path} (taken "
                f"{fmt_time(held.created)}, refreshed {fmt_time(held.refreshed)})")
        return
    held = await break_lock(remote, path)
    if held is None:
        info(f"{path}: not locked")
        return
    info(f"{path}: broke the lock of {shown(held.holder)} (taken {fmt_time(held.created)}, "
         f"refreshed {fmt_time(held.refreshed)})")


async def cmd_list(args: argparse.Namespace, remote: RemoteStore) -> None:
    k, _cfg, catalog = await open_repo(args, remote)
    if args.json:
        devices = await read_devices(remote, k)
        say(json.dumps({"serial": catalog.serial, "issued": catalog.issued,
                        "images": [{"name": name, **vars(v)}
                                   for name, versions in sorted(catalog.images.items())
                                   for v in versions],
                        "devices": [{"name": r.name, "device": r.device,
                                     "enrolled": r.enrolled} for r in devices]},
                       indent=1, sort_keys=True))
        return
    say(f"catalog serial {catalog.serial}, issued {fmt_time(catalog.issued)}")
    for name, versions in sorted(catalog.images.items()):
        for v in versions:
            say(f"  {name:<24} v{v.version:<4} {human_size(v.size):>10}  "
                f"{fmt_time(v.created)}  manifest {v.manifest[:16]}")
    if not catalog.images:
        say("  (no images)")
    devices = await read_devices(remote, k)
    say(f"devices: {len(devices)}")
    for rec in devices:
        say(f"  {rec.name:<24} {rec.device}  enrolled {fmt_time(rec.enrolled)}")


def protect_keys(args: argparse.Namespace) -> None:
    """Encrypt plain admin keys under a new passphrase (both files, one salt)."""
    k = keys.load(args.key_dir, session.passphrase(args), warn=False)
    if keys.is_encrypted(args.key_dir):
        raise UsageError(f"the admin keys in {args.key_dir} are encrypted already")
    keys.store(k, session.new_passphrase(args, confirm=True))
    info(f"admin keys in {args.key_dir} encrypted under the passphrase; copies made before "
         "(the offline escrow copy!) are still plain: replace them")


# --- helpers ---------------------------------------------------------------------------------

async def read_devices(remote: RemoteStore, k: keys.AdminKeys) -> list[DeviceRecord]:
    out = []
    for entry in await remote.list("devices"):
        parts = entry.path.split("/")
        if len(parts) == 3 and parts[2] == "device" and DEVICE_ID_RE.fullmatch(parts[1]):
            out.append(await read_device(remote, k, parts[1]))
    return sorted(out, key=lambda r: r.name)


async def read_device(remote: RemoteStore, k: keys.AdminKeys, device: str) -> DeviceRecord:
    admin = k.admin.public_key()
    path = layout.device_record(device)
    _s, body, _raw = await get_signed(remote, path, {crypto.key_id(admin): admin}, "device",
                                      device)
    return DeviceRecord.parse(body, device, path)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def fmt_time(t: int) -> str:
    return utc(t)


def check_file(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"{path}: no such image file")


if __name__ == "__main__":
    sys.exit(main())
