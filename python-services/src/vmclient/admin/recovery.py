"""``vmclient-admin recovery-key DEVICE``: the recovery key of a laptop's data partition.

The laptop uploads its recovery key wrapped for the organisation's escrow key and signed
by its device key (:mod:`vmclient.manage.recovery`); this unwraps it with the offline
escrow private key, on the admin's machine, for a person whose laptop's TPM2 refuses to
unlock the data partition.  The storage server never sees it in clear.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import NotFound
from ..manage import recovery
from ..store import crypto
from ..store.errors import ObjectNotFound
from ..store.format import shown
from ..store.remote import RemoteStore
from . import keys, session
from .session import find_device
from .text import utc


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("recovery-key", help="a laptop's data-partition recovery key, "
                       "unwrapped with the escrow key (for a laptop whose TPM2 refuses)")
    s.add_argument("device", help="device id (32 hex) or enrolled name")
    s.add_argument("--escrow-key", type=Path,
                   help="the escrow private key, PEM (default: escrow.pem in --key-dir)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_recovery_key)


async def cmd_recovery_key(args: argparse.Namespace, remote: RemoteStore) -> None:
    k = await session.open_keys(args, remote)
    escrow = keys.load_key(args.escrow_key, crypto.X25519PrivateKey,  # type: ignore[type-abstract]
                           session.passphrase(args)) if args.escrow_key else k.escrow
    rec = await find_device(remote, k, args.device)
    try:
        doc = await recovery.fetch(remote, rec.device, crypto.ed25519_public(rec.signing_key))
    except ObjectNotFound:
        raise NotFound(f"{rec.name} ({rec.device}) has not escrowed a recovery key (yet): "
                       "it does so after its enrolment, at its next contact") from None
    key = doc.unwrap(escrow, recovery.object_path(rec.device))
    if args.json:
        print(json.dumps({"device": rec.device, "name": rec.name, "created": doc.created,
                          "volume": doc.volume, "keyslot": doc.keyslot, "recovery_key": key},
                         indent=2, sort_keys=True))
        return
    slot = f"key slot {doc.keyslot}" if doc.keyslot >= 0 else "key slot unknown"
    print(f"recovery key of {shown(rec.name)} ({rec.device}), {shown(doc.volume)}, {slot}, "
          f"made {utc(doc.created)}:\n\n    {key}\n\n"
          "Type it at the laptop's prompt for the data partition's passphrase.", flush=True)
