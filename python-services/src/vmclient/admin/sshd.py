"""The server-side confinement of one device's SFTP account (pure: text in, text out).

Design (repository-format.md §2, "per-device permissions"): every device has a
system account ``vmc-<first 12 hex of its id>``; sshd chroots it into the
repository directory itself (root-owned, 0755, as sshd requires of every
component of the chroot path) and forces ``internal-sftp``.  Inside, the
account reads what is world-readable (``config``, ``catalog``, ``images/``)
and nothing of the other devices:

* ``devices/`` is root:root 0711 — traversable, not listable, so device ids
  are not enumerable;
* ``devices/<id>/`` is root:<account> 1770 — only that account (and root)
  enters it; the account creates its own files (``lock``, ``vms/``,
  ``reports/``), and the sticky bit keeps it from deleting or renaming what
  root wrote there (``device``, ``orders/``);
* public keys live outside the repository, one root-owned file per account
  (``AuthorizedKeysFile <keys dir>/%u``), with the ``restrict`` option.

``vmclient-admin enrol`` prints all of this; the integration fixture applies
exactly the same text to a real sshd.

Before it has an account, a laptop delivers its enrolment request through the
**enrolment drop box** (:func:`enrolment_dropbox`): one shared account
``vmc-enrol`` whose key ships with the image, chrooted into the repository
like a device, that can only create files in ``enrolment/`` (root:vmc-enrol
1730: no listing, no reading, and the sticky bit keeps it from replacing
another laptop's request).  A request it drops is worth nothing without a
valid one-time code (repository-format.md §5, enrolment request).  Like
every account it reads what is world-readable: IT's signed refusals in
``enrolment-refused/`` are how a laptop without an account learns that its
request was refused (§5, enrolment refusal).

Revocation (:func:`revocation`) removes the device's authorized-keys file,
which ends its logins at once (sshd reads the file at every login), then
deletes the account and its ``Match`` block.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

from ..errors import UsageError
from ..store.format import shown
from ..store.layout import account_name

ENROL_ACCOUNT = "vmc-enrol"
# one OpenSSH public key, one line, no options, a comment of printable ASCII: a second
# line would be a second key without ``restrict`` in the account's authorized-keys file
# (the script quotes the line for the shell)
PUBLIC_KEY_RE = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) "
                           r"[A-Za-z0-9+/]+={0,3}( [\x20-\x7e]{1,128})?$")


def check_public_key(key: str) -> str:
    """``key`` if it is one plain OpenSSH public key line; UsageError otherwise."""
    if not PUBLIC_KEY_RE.fullmatch(key):
        raise UsageError(f"not one OpenSSH public key line (type, base64, optional plain "
                         f"comment): {shown(key[:80])!r}")
    return key


@dataclass(frozen=True)
class Confinement:
    account: str
    commands: tuple[tuple[str, ...], ...]  # run as root on the storage server, in order
    authorized_keys_path: str
    authorized_keys: str
    match_block: str  # append to sshd_config (Match blocks go last)

    def script(self) -> str:
        """The commands as a shell script (the authorized-keys file written with printf)."""
        lines = ["set -e"]
        lines += [shlex.join(c) for c in self.commands]
        lines.append(f"printf '%s\\n' {shlex.quote(self.authorized_keys)} > "
                     f"{shlex.quote(self.authorized_keys_path)}")
        lines.append(f"chmod 0644 {shlex.quote(self.authorized_keys_path)}")
        return "\n".join(lines) + "\n"


GLOBAL_CONFIG = """\
# vmclient repository: global sshd settings (once per server)
Subsystem sftp internal-sftp
PasswordAuthentication no
KbdInteractiveAuthentication no
"""


def confinement(device_id: str, ssh_public_key: str, repo_dir: str, keys_dir: str
                ) -> Confinement:
    account = account_name(device_id)
    check_public_key(ssh_public_key.strip())
    repo, keys = PurePosixPath(repo_dir), PurePosixPath(keys_dir)
    device_dir = repo / "devices" / device_id
    commands = (
        ("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/",
         "--shell", "/usr/sbin/nologin", account),
        ("usermod", "-p", "*", account),  # no password, but not "locked" (sshd refuses those)
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0755", str(repo)),
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0711", str(repo / "devices")),
        ("install", "-d", "-o", "root", "-g", account, "-m", "1770", str(device_dir)),
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0755", str(device_dir / "orders")),
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0755", str(keys)),
    )
    key_path = str(keys / account)
    match = _match(f"vmclient device {device_id}", account, repo, keys)
    return Confinement(account, commands, key_path, f"restrict {ssh_public_key.strip()}", match)


def _match(comment: str, account: str, repo: PurePosixPath, keys: PurePosixPath) -> str:
    return (f"# {comment}\n"
            f"Match User {account}\n"
            f"    AuthorizedKeysFile {keys}/%u\n"
            f"    ChrootDirectory {repo}\n"
            f"    ForceCommand internal-sftp -u 0022\n"
            f"    AllowTcpForwarding no\n"
            f"    AllowAgentForwarding no\n"
            f"    AllowStreamLocalForwarding no\n"
            f"    PermitTunnel no\n"
            f"    PermitTTY no\n"
            f"    X11Forwarding no\n")


def enrolment_dropbox(ssh_public_key: str, repo_dir: str, keys_dir: str, *,
                      account: str = ENROL_ACCOUNT) -> Confinement:
    """The shared account laptops use to deliver enrolment requests (once per server)."""
    check_public_key(ssh_public_key.strip())
    repo, keys = PurePosixPath(repo_dir), PurePosixPath(keys_dir)
    commands = (
        ("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/",
         "--shell", "/usr/sbin/nologin", account),
        ("usermod", "-p", "*", account),
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0755", str(repo)),
        ("install", "-d", "-o", "root", "-g", account, "-m", "1730",
         str(repo / "enrolment")),
        ("install", "-d", "-o", "root", "-g", "root", "-m", "0755", str(keys)),
    )
    return Confinement(account, commands, str(keys / account),
                       f"restrict {ssh_public_key.strip()}",
                       _match("vmclient enrolment drop box", account, repo, keys))


@dataclass(frozen=True)
class Revocation:
    account: str
    authorized_keys_path: str  # removed first: no further login
    commands: tuple[tuple[str, ...], ...]  # then, on the server as root
    match_comment: str  # the line that opens the Match block to delete from sshd_config

    def script(self) -> str:
        lines = ["set -e", f"rm -f {shlex.quote(self.authorized_keys_path)}"]
        lines += [shlex.join(c) + (" || true" if c[0] == "pkill" else "")
                  for c in self.commands]
        lines.append(f"# then delete the block starting '{self.match_comment}' "
                     "from sshd_config and reload sshd")
        return "\n".join(lines) + "\n"


def revocation(device_id: str, keys_dir: str) -> Revocation:
    account = account_name(device_id)
    return Revocation(account, str(PurePosixPath(keys_dir) / account),
                      (("pkill", "-KILL", "-u", account), ("userdel", account)),
                      f"# vmclient device {device_id}")
