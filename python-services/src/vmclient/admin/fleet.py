"""``vmclient-admin`` remote management: enrolment codes, orders, the fleet, rekey and restore.

    vmclient-admin … enrol --code NAME            issue a one-time enrolment code
    vmclient-admin … enrol --accept               enrol the laptops whose requests carry one
    vmclient-admin … enrol --dropbox SSH_PUB      print the enrolment drop box's sshd setup
    vmclient-admin … order DEVICE ACTION [k=v …]  assign|unassign|renew|lock|unlock|wipe
    vmclient-admin … devices [--json]             the fleet view
    vmclient-admin … devices revoke DEVICE        no more orders, no more SSH access
    vmclient-admin … reports DEVICE [--json]      the device's verified reports
    vmclient-admin … rekey VM --to DEVICE         hand a synced VM's data key to a new device
    vmclient-admin … restore VM --to DEVICE       rekey + the orders that bring it up there

The functions behind them are in :mod:`vmclient.manage.admin`,
:mod:`vmclient.manage.enrol` and :mod:`vmclient.manage.rekey`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import UsageError
from ..manage import admin as it
from ..manage import enrol, fleetview
from ..manage import rekey as rk
from ..store import crypto, layout
from ..store.format import shown
from ..store.orders import DeviceRecord
from ..store.remote import RemoteStore
from ..transport import close_store, is_url, open_store
from . import keys, orders, serverscript, session
from .orders import describe as _describe
from .progress import progress_bar
from .session import find_device
from .sshd import confinement, enrolment_dropbox, revocation
from .text import human_size

CODES = "enrolment-codes.json"
DEFAULT_SERVER_KEYS = "/etc/ssh/vmclient-keys"


def say(text: str) -> None:
    print(text, flush=True)


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("order", help="issue a signed order to a device")
    s.add_argument("device", help="device id (32 hex) or enrolled name")
    s.add_argument("action", choices=sorted(orders.ACTIONS))
    s.add_argument("args", nargs="*", help="key=value: vm=NAME, recipe=FILE, "
                   "lease_until=+14d|UNIX_TIME, include_private=yes|no; for cancel: the "
                   "number of the pending order; for host-update: VERSION [downgrade=yes] "
                   "[maintenance=HH:MM-HH:MM]")
    s.add_argument("--yes", action="store_true", help="confirm a wipe")
    s.add_argument("--dry-run", action="store_true",
                   help="check and show the order, write nothing")
    s.add_argument("--json", action="store_true", help="the order as JSON")
    s.set_defaults(func=orders.cmd_order)

    s = sub.add_parser("devices", help="the fleet: last contact, lease, VMs, pending orders")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    dsub = s.add_subparsers(dest="devices_command")
    r = dsub.add_parser("revoke", help="revoke a device: no orders, no SSH access")
    r.add_argument("device", help="device id (32 hex) or enrolled name")
    r.add_argument("--reason", default="wiped", help="recorded with the revocation")
    r.add_argument("--force", action="store_true",
                   help="revoke without a verified wipe report (the laptop can then no "
                   "longer fetch a pending wipe order)")
    r.add_argument("--dry-run", action="store_true",
                   help="check and show what would be revoked, change nothing")
    r.add_argument("--server-keys", default=DEFAULT_SERVER_KEYS,
                   help="the storage server's per-account authorized-keys directory")
    s.set_defaults(func=cmd_devices)

    s = sub.add_parser("reports", help="a device's verified, device-signed reports")
    s.add_argument("device", help="device id (32 hex) or enrolled name")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_reports)

    for name, text in (("rekey", "wrap a synced VM's data key (from escrow) for a device"),
                       ("restore", "rekey, renew the device's lease, and have the device "
                        "restore the VM and start it")):
        s = sub.add_parser(name, help=text)
        s.add_argument("vm")
        s.add_argument("--to", required=True, help="the new device (id or enrolled name)")
        s.add_argument("--from", dest="source",
                       help="the device whose snapshots to use (default: the only other "
                       "device that synced VM)")
        s.add_argument("--escrow-key", type=Path,
                       help="the escrow private key, PEM (default: escrow.pem in --key-dir)")
        if name == "restore":
            s.add_argument("--lease-days", type=int, default=14,
                           help="lease the new device gets (default %(default)s)")
            s.add_argument("--no-start", action="store_true",
                           help="restore the VM on the device in full, but do not start "
                                "it (without it the VM runs at once, its disks streaming in)")
        s.set_defaults(func=cmd_rekey)


def add_enrol_options(s: argparse.ArgumentParser) -> None:
    s.add_argument("--code", metavar="NAME", help="issue a one-time enrolment code for NAME")
    s.add_argument("--code-ttl-days", type=int, default=7)
    s.add_argument("--accept", action="store_true",
                   help="enrol every pending request that carries a valid code")
    s.add_argument("--dropbox", metavar="SSH_PUB",
                   help="print the sshd setup of the enrolment drop box for this SSH key")


# --- enrol --------------------------------------------------------------------------------

async def cmd_enrol_code(args: argparse.Namespace, remote: RemoteStore) -> None:
    if sum(map(bool, (args.code, args.accept, args.dropbox))) != 1:
        raise UsageError("enrol: give one of --code NAME, --accept, --dropbox SSH_PUB")
    server_repo = args.server_repo or _server_path(args.repo)
    if args.dropbox:
        conf = enrolment_dropbox(_ssh_key(args.dropbox), server_repo, args.server_keys)
        say(f"# --- on the storage server, as root: the enrolment drop box ---\n"
            f"{conf.script()}# --- sshd_config: append, then reload sshd ---\n"
            f"{conf.match_block}")
        return
    k = await session.open_keys(args, remote)
    book = enrol.CodeBook(k.dir / CODES)
    now = int(time.time())
    if args.code:
        if args.code_ttl_days < 1:
            raise UsageError("--code-ttl-days: at least 1")
        code = book.issue(args.code, now, args.code_ttl_days * 86400)
        say(f"one-time enrolment code for {args.code} (valid {args.code_ttl_days} days):")
        say(code)
        say(f"on the laptop: vmclientctl enrol <repository> --name {args.code} --code {code} "
            f"--admin-key {_b64(crypto.raw_public(k.admin.public_key()))}")
        return
    serverscript.check_target(getattr(args, "server_script", None))
    outcomes = await enrol.process_requests(remote, k.admin, book, now)
    if not outcomes:
        say("no pending enrolment requests")
    refused = 0
    setups = []
    for o in outcomes:  # names, ids and details come from laptops' requests: shown escaped
        if not o.enrolled:
            refused += 1
            say(f"refused {shown(o.name)} ({shown(o.device)}): {shown(o.detail)}")
            continue
        say(f"enrolled {shown(o.name)} as device {o.device} ({shown(o.detail)})")
        if not o.ssh_key:
            say("# the request carries no SSH key: give one with "
                f"`enrol {o.name} --pubkey … --ssh-key-pub …`")
            continue
        conf = confinement(o.device, o.ssh_key, server_repo, args.server_keys)
        setups.append((o.device, conf))
        say(f"  its repository URL: sftp://{conf.account}@<server>/")
    if setups:
        text = serverscript.render(setups, now)
        where = serverscript.write(text, getattr(args, "server_script", None), k.dir, now)
        say(serverscript.summary(where, len(setups)))
    if refused:
        raise UsageError(f"{refused} enrolment request(s) refused (removed; each laptop "
                         "reads why at its next cycle)")


# --- orders and the fleet -----------------------------------------------------------------

async def cmd_devices(args: argparse.Namespace, remote: RemoteStore) -> None:
    if args.devices_command == "revoke":
        return await cmd_revoke(args, remote)
    k = await session.open_keys(args, remote)
    views = await fleetview.devices(remote, k.admin.public_key())
    now = int(time.time())
    if args.json:
        say(json.dumps([v.to_json() for v in views], indent=1, sort_keys=True))
    elif not views:
        say("no enrolled devices")
    else:
        say(fleetview.render_devices(views, now))


async def cmd_reports(args: argparse.Namespace, remote: RemoteStore) -> None:
    k = await session.open_keys(args, remote)
    rec = await find_device(remote, k, args.device)
    reports = await it.reports_of(remote, k.admin.public_key(), rec.device)
    if args.json:
        say(json.dumps([vars(r) for r in reports], indent=1, sort_keys=True))
        return
    say(f"reports of {rec.name} ({rec.device}), each verified with its device key:")
    for r in reports:
        about = f"order {r.order}" if r.order else "refused object"
        say(f"  {r.seq:>4}  {_when(r.time)}  {about:<14}  {r.outcome:<8}  {shown(r.detail)}")
    if not reports:
        say("  (none yet)")


async def cmd_revoke(args: argparse.Namespace, remote: RemoteStore) -> None:
    k = await session.open_keys(args, remote)
    rec = await find_device(remote, k, args.device)
    wiped = await it.wipe_report(remote, k.admin.public_key(), rec.device)
    if wiped is None and not args.force:
        raise UsageError(f"no verified wipe report from {rec.name} ({rec.device}) yet: a "
                         "revoked laptop cannot fetch its wipe order; wait for the report, "
                         "or add --force")
    if args.dry_run:
        plan = revocation(rec.device, args.server_keys)
        say(f"dry run: would revoke {rec.name} ({rec.device}) and delete "
            f"{plan.authorized_keys_path}; nothing changed")
        return
    _rec, rev = await it.revoke(remote, k.admin, rec.device, args.reason, int(time.time()))
    say(f"device {rec.name} ({rec.device}) revoked on {_when(rev.revoked)}: "
        "no further orders")
    if args.repo.startswith("s3://"):  # the device's own S3 identity goes (s3iam)
        from . import s3iam
        n = await s3iam.revoke(s3iam.s3_store(args, remote), rec.device)
        say(f"S3 access removed: {n} access key(s) of {rec.name} deleted")
        return
    plan = revocation(rec.device, args.server_keys)
    removed = await _remove_authorized_keys(args, plan.account)
    if removed:
        say(f"SSH access removed: {plan.authorized_keys_path} deleted on the server")
    say(f"# --- on the storage server, as root: finish the clean-up ---\n{plan.script()}")


async def _remove_authorized_keys(args: argparse.Namespace, account: str) -> bool:
    """Delete ``<server keys>/<account>`` through the admin's own access to the server."""
    if not is_url(args.repo):
        path = Path(args.server_keys) / account
        try:
            path.unlink()
        except FileNotFoundError:
            return True
        except OSError as exc:
            say(f"could not delete {path} ({exc.strerror}): delete it on the server")
            return False
        return True
    url = urlsplit(args.repo)
    where = f"sftp://{url.netloc}{args.server_keys}"
    store = open_store(where, key_file=args.ssh_key, known_hosts=args.known_hosts,
                       agent=args.ssh_agent)
    try:
        await store.delete(account)
    finally:
        await close_store(store)
    return True


# --- rekey and restore --------------------------------------------------------------------

async def cmd_rekey(args: argparse.Namespace, remote: RemoteStore) -> None:
    if args.command == "restore" and args.lease_days < 1:
        raise UsageError("--lease-days: at least 1")  # before anything is written
    k = await session.open_keys(args, remote)
    escrow = keys.load_key(args.escrow_key, crypto.X25519PrivateKey,  # type: ignore[type-abstract]
                           session.passphrase(args)) if args.escrow_key else k.escrow
    admin_pub = k.admin.public_key()
    target = await find_device(remote, k, args.to)
    if await it.revocation(remote, admin_pub, target.device) is not None:
        raise UsageError(f"device {target.name} ({target.device}) is revoked")
    source = await (find_device(remote, k, args.source) if args.source
                    else _only_source(remote, k, args.vm, target.device))
    if await it.wipe_report(remote, admin_pub, source.device) is None and \
            await it.revocation(remote, admin_pub, source.device) is None:
        say(f"note: {source.name} ({source.device}) is neither wiped nor revoked; "
            "both laptops will hold the VM")
    with progress_bar(f"rekey {args.vm}") as bar:
        result = await rk.rekey(remote, k.admin, escrow, args.vm, source, target,
                                progress=bar.advance, on_size=bar.total)
    say(f"{args.vm}: data key of {source.name} ({source.device}) re-wrapped for "
        f"{target.name} ({target.device}); snapshot {result.snapshot} (seq {result.seq}); "
        f"{result.copied} objects copied ({human_size(result.copied_bytes)}), "
        f"{result.skipped} already there")
    now = int(time.time())
    values: dict[str, object] = {"vm": args.vm, "from_device": source.device,
                                 "min_seq": result.seq}
    if args.command == "restore":  # the lease first: the restored VM starts under it
        renew = await it.issue_order(remote, k.admin, target.device, "renew-lease",
                                     {"lease_until": now + args.lease_days * 86400}, now,
                                     numbers=k.orders)
        say(f"order {renew.seq}: {_describe(renew)}")
        values.update(restore=True, start=not args.no_start)
    order = await it.issue_order(remote, k.admin, target.device, "rekey", values, now,
                                 numbers=k.orders)
    say(f"order {order.seq}: {_describe(order)}")
    account = f"vmc-{target.device[:12]}"
    say(f"# --- on the storage server, as root: let {target.name} keep syncing into the "
        f"copy ---\nchown -R {account}:{account} "
        f"{_server_path(args.repo)}/{layout.vm_dir(target.device, args.vm)}")


async def _only_source(remote: RemoteStore, k: keys.AdminKeys, vm: str,
                       target: str) -> DeviceRecord:
    found = []
    for view in await fleetview.devices(remote, k.admin.public_key()):
        if view.device != target and any(m.vm == vm for m in view.vms):
            found.append(view.device)
    if len(found) != 1:
        raise UsageError(f"{len(found)} other devices have synced VM {vm!r}: name one with "
                         "--from")
    return await find_device(remote, k, found[0])


# --- helpers --------------------------------------------------------------------------------

def _ssh_key(value: str) -> str:
    path = Path(value)
    text = path.read_text().strip() if path.is_file() else value.strip()
    if not enrol.SSH_KEY_RE.fullmatch(text):
        raise UsageError(f"not an OpenSSH ed25519/ecdsa public key: {text[:40]!r}")
    return text


def _server_path(repo: str) -> str:
    if is_url(repo):
        return urlsplit(repo).path or "/"
    return str(Path(repo).resolve())


def _b64(raw: bytes) -> str:
    import base64
    return base64.b64encode(raw).decode()


def _when(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t)) if t else "never"
