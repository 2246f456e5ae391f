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
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath

ACCOUNT_PREFIX = "vmc-"


def account_name(device_id: str) -> str:
    return ACCOUNT_PREFIX + device_id[:12]


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
    match = (f"# vmclient device {device_id}\n"
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
    return Confinement(account, commands, key_path, f"restrict {ssh_public_key.strip()}", match)
