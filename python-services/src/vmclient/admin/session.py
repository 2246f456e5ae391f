"""Where ``vmclient-admin`` finds its repository and keys, and opening them with errors
that say what to do.

The repository comes from ``--repo``, else ``$VMCLIENT_REPOSITORY``, else ``repo`` in
the config file (``--config``, default ``$XDG_CONFIG_HOME/vmclient/admin.toml``), which
may also give ``key_dir``, ``ssh_key`` and ``known_hosts``; the command line wins.

Opening checks, in order, each with its own message: a repository exists at all
(else "run vmclient-admin init"), it is this admin's (the config is signed by the
key in ``--key-dir``, else both key ids are named), and its catalog is not older
than the newest this admin signed (else the rollback is named and
``--accept-rollback`` offered: the served catalog is re-signed with the next
serial, so no serial is ever issued twice).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..config import string_table
from ..errors import EXIT_CONFIG, ConfigError, NotFound, UsageError, VMClientError
from ..manage import admin as it
from ..manage import fleetview
from ..store import crypto, layout
from ..store.documents import Catalog, RepoConfig
from ..store.errors import EXIT_INTEGRITY, ObjectNotFound, UnknownSigner
from ..store.orders import DEVICE_ID_RE, DeviceRecord
from ..store.remote import RemoteStore
from ..store.repo import get_catalog, get_config, put_catalog
from ..transport import is_url
from . import keys

ENV_REPOSITORY = "VMCLIENT_REPOSITORY"
DEFAULT_KEY_DIR = "~/.vmclient-admin"
CONFIG_KEYS = ("repo", "key_dir", "ssh_key", "known_hosts", "s3_credentials")


class WrongAdminKey(VMClientError):
    """this repository belongs to admin key {}; --key-dir {} holds admin key {}: give the key directory of this repository's admin"""  # noqa: E501

    exit_code = EXIT_CONFIG


class CatalogRolledBack(VMClientError):
    """{}"""

    exit_code = EXIT_INTEGRITY


def default_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vmclient" / "admin.toml"


def resolve(args: argparse.Namespace, *, need_repo: bool = True) -> None:
    """Fill ``repo``, ``key_dir``, ``ssh_key``, ``known_hosts`` (and ``ssh_agent``) from
    env, config file and OpenSSH's configuration."""
    path = Path(args.config).expanduser() if args.config else default_config()
    try:
        untrusted = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if args.config:
            raise ConfigError(path, "", "no such config file") from None
        untrusted = {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, "", str(exc)) from exc
    conf = string_table(untrusted, CONFIG_KEYS, path)
    args.repo = args.repo or os.environ.get(ENV_REPOSITORY) or conf.get("repo")
    if not args.repo and need_repo:
        raise UsageError(f"no repository: give --repo, set {ENV_REPOSITORY}, or put "
                         f"repo = \"…\" in {path}")
    args.key_dir = Path(args.key_dir or conf.get("key_dir") or DEFAULT_KEY_DIR).expanduser()
    args.ssh_agent = None  # an sftp:// repository may use one (ssh_defaults)
    for key in ("ssh_key", "known_hosts", "s3_credentials"):
        if getattr(args, key, None) is None and key in conf:
            setattr(args, key, str(Path(conf[key]).expanduser()))
    if args.repo and is_url(args.repo) and not args.repo.startswith("s3://"):
        ssh_defaults(args)


def ssh_defaults(args: argparse.Namespace) -> None:
    """For ``sftp://``, resolve the URL's host and what ``--ssh-key``/``--known-hosts``
    leave open as OpenSSH would (:func:`ssh_settings`): a ``Host`` alias becomes its
    ``HostName``, ``Port`` and ``User`` (what the URL names wins), the key is the first
    ``IdentityFile`` that exists, the pin file the first ``UserKnownHostsFile``, and the
    ssh-agent (``IdentityAgent``, default ``$SSH_AUTH_SOCK``) is used too: a key held
    only by the agent logs in, and the agent signs for a key file it holds (a
    passphrase-protected one)."""
    url = urlsplit(args.repo)
    host = url.hostname or ""
    try:
        port = url.port
    except ValueError as exc:
        raise UsageError(f"repository URL {args.repo!r}: {exc}") from exc
    found = ssh_settings(host, url.username and unquote(url.username), port)
    args.repo = resolved_url(args.repo, found)
    tried_keys = [_home(f) for f in found.get("identityfile", []) if f.lower() != "none"]
    tried_hosts = [_home(f) for f in " ".join(found.get("userknownhostsfile", [])).split()]
    agent, agent_from = ssh_agent(found)
    args.ssh_agent = str(agent) if agent and agent.is_socket() else None
    if args.ssh_key is None:
        args.ssh_key = next((str(f) for f in tried_keys if f.is_file()), None)
    if args.known_hosts is None:
        args.known_hosts = next((str(f) for f in tried_hosts if f.is_file()), None)
    missing = []
    if args.ssh_key is None and args.ssh_agent is None:
        why = (f"{agent_from} is {agent}, not a socket" if agent else f"{agent_from}")
        missing.append(f"no SSH key: no key file (tried {', '.join(map(str, tried_keys)) or '-'}"
                       f") and no ssh-agent ({why}): give --ssh-key FILE, or ssh-add the key "
                       "to a running ssh-agent")
    if args.known_hosts is None:
        missing.append(f"no known_hosts file pinning its host key (tried "
                       f"{', '.join(map(str, tried_hosts)) or '-'}: give --known-hosts FILE)")
    if missing:
        raise UsageError(f"{args.repo}: " + "; ".join(missing))


def ssh_agent(found: dict[str, list[str]]) -> tuple[Path | None, str]:
    """The ssh-agent socket OpenSSH would use (``IdentityAgent``, else ``$SSH_AUTH_SOCK``)
    and where it came from, for messages; None when there is none."""
    value = (found.get("identityagent") or ["SSH_AUTH_SOCK"])[0]
    if value.lower() == "none":
        return None, "IdentityAgent none in the ssh configuration"
    if value == "SSH_AUTH_SOCK" or value.startswith("$"):
        name = value.lstrip("$").strip("{}")
        where = os.environ.get(name)
        return (Path(where) if where else None), (f"${name}" + ("" if where else " is not set"))
    return _home(value), f"IdentityAgent {value}"


def _home(path: str) -> Path:
    """A path from ``ssh -G``: its ``~`` and the account's home (ssh's idea of ``~``) are
    ``$HOME``, where the rest of the configuration was read."""
    account = pwd.getpwuid(os.getuid()).pw_dir.rstrip("/")
    if account and path.startswith(account + "/"):
        path = "~" + path[len(account):]
    return Path(path).expanduser()


def resolved_url(repo: str, found: dict[str, list[str]]) -> str:
    """``repo`` with the host, port and user OpenSSH's configuration gives (pure)."""
    url = urlsplit(repo)
    host = (found.get("hostname") or [url.hostname or ""])[0]
    user = unquote(url.username) if url.username else (found.get("user") or [""])[0]
    port = url.port or int((found.get("port") or ["22"])[0])
    where = f"[{host}]" if ":" in host else host
    netloc = (f"{quote(user, safe='')}@" if user else "") + f"{where}:{port}"
    return urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))


def ssh_settings(host: str, user: str | None, port: int | None) -> dict[str, list[str]]:
    """OpenSSH's configuration for ``host``, keys lower-case, as ``ssh -G`` resolves it
    (``Include``, ``Match``, defaults and tokens as for a real connection; it connects to
    nothing).  It reads the user's ``~/.ssh/config`` and ``/etc/ssh/ssh_config``; with
    ``$HOME`` set elsewhere than the account's home, ``$HOME/.ssh/config`` alone.
    Without an ``ssh`` program only OpenSSH's default file names apply (and a
    ``~/.ssh/config`` is an error: nothing here would read it as ssh does)."""
    if host.startswith("-") or not host:
        raise UsageError(f"invalid SSH host {host!r}")
    home = Path.home()
    exe = shutil.which("ssh")
    if exe is None:
        if (home / ".ssh" / "config").is_file():
            raise ConfigError(home / ".ssh" / "config", "",
                              "OpenSSH's ssh is not installed to read it")
        return {"identityfile": [f"~/.ssh/{n}" for n in ("id_ed25519", "id_ecdsa", "id_rsa")],
                "userknownhostsfile": ["~/.ssh/known_hosts"]}
    argv = [exe, "-G"]
    if home != Path(pwd.getpwuid(os.getuid()).pw_dir):
        config = home / ".ssh" / "config"
        argv += ["-F", str(config) if config.is_file() else "none"]
    argv += (["-p", str(port)] if port else []) + (["-l", user] if user else [])
    try:
        r = subprocess.run([*argv, "--", host], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(home / ".ssh" / "config", "", f"ssh -G {host}: {exc}") from exc
    if r.returncode != 0:
        raise ConfigError(home / ".ssh" / "config", "",
                          f"ssh -G {host}: {r.stderr.strip() or r.returncode}")
    return parse_ssh_g(r.stdout)


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """``ssh -G`` output (``keyword value`` lines) -> keyword -> values, in order (pure)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def passphrase(args: argparse.Namespace) -> keys.Passphrase:
    """Where the passphrase of encrypted admin keys comes from, asked only when needed:
    ``--passphrase-file``, ``$VMCLIENT_ADMIN_PASSPHRASE``, else a prompt on a terminal."""
    def get() -> bytes:
        return new_passphrase(args, confirm=False)
    return get


def new_passphrase(args: argparse.Namespace, *, confirm: bool) -> bytes:
    if getattr(args, "passphrase_file", None):
        path = Path(args.passphrase_file).expanduser()
        try:
            value = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(f"--passphrase-file {path}: {exc.strerror}") from exc
        if not value:
            raise UsageError(f"--passphrase-file {path}: empty")
        return value
    if os.environ.get(keys.ENV_PASSPHRASE):
        return keys.env_passphrase()
    if not sys.stdin.isatty():
        if confirm:
            raise UsageError(f"init encrypts the admin keys under a passphrase: type it on a "
                             f"terminal, or give {keys.ENV_PASSPHRASE} or --passphrase-file; "
                             "--no-passphrase keeps them unencrypted (not recommended)")
        return keys.env_passphrase()  # raises: says where a passphrase can come from
    import getpass
    value = getpass.getpass(f"passphrase of the admin keys in {args.key_dir}: ").encode()
    if confirm:
        if len(value) < 8:
            raise UsageError("passphrase: at least 8 characters")
        if getpass.getpass("again: ").encode() != value:
            raise UsageError("the two passphrases differ")
    return value


async def open_config(args: argparse.Namespace, remote: RemoteStore,
                      k: keys.AdminKeys) -> RepoConfig:
    """The repository's config, verified with the admin key of ``--key-dir``."""
    admin = k.admin.public_key()
    try:
        return await get_config(remote, admin)
    except ObjectNotFound:
        raise NotFound(f"no repository at {args.repo} (it has no {layout.CONFIG} object): "
                       "run `vmclient-admin init` to create one, or check --repo") from None
    except UnknownSigner as exc:
        raise WrongAdminKey(exc.untrusted_signer, args.key_dir, crypto.key_id(admin)) from exc


async def open_keys(args: argparse.Namespace, remote: RemoteStore) -> keys.AdminKeys:
    """The admin's keys, once the repository is found to be theirs."""
    k = keys.load(args.key_dir, passphrase(args))
    await open_config(args, remote, k)
    return k


async def open_repo(args: argparse.Namespace, remote: RemoteStore
                    ) -> tuple[keys.AdminKeys, RepoConfig, Catalog]:
    k = keys.load(args.key_dir, passphrase(args))
    cfg = await open_config(args, remote, k)
    catalog, _digest = await get_catalog(remote, k.admin.public_key(), cfg.repository)
    known = k.known_serial(cfg.repository)
    if catalog.serial < known:
        catalog = await _rolled_back(args, remote, k, catalog, known)
    return k, cfg, catalog


async def _rolled_back(args: argparse.Namespace, remote: RemoteStore, k: keys.AdminKeys,
                       catalog: Catalog, known: int) -> Catalog:
    issued = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(catalog.issued))
    if not getattr(args, "accept_rollback", False):
        raise CatalogRolledBack(
            f"the repository's catalog is serial {catalog.serial} (issued {issued}), but this "
            f"admin already signed serial {known}: the repository was rolled back (restored "
            "from a backup?) or the server replays an old catalog. If you know why, run the "
            "command again with --accept-rollback: the catalog as served is re-signed as "
            f"serial {known + 1}, and what was published after serial {catalog.serial} is no "
            "longer listed")
    new = replace(catalog, serial=known + 1, issued=int(time.time()))
    await put_catalog(remote, k.admin, new)
    k.record_serial(catalog.repository, new.serial)
    print(f"accepted the rolled-back catalog (serial {catalog.serial}, issued {issued}); "
          f"re-signed as serial {new.serial}", file=sys.stderr, flush=True)
    return new


async def find_device(remote: RemoteStore, k: keys.AdminKeys, which: str) -> DeviceRecord:
    admin = k.admin.public_key()
    if DEVICE_ID_RE.fullmatch(which):
        return await it.device_record(remote, admin, which)
    views = [v for v in await fleetview.devices(remote, admin) if v.name == which]
    live = [v for v in views if not v.revoked] or views
    if len(live) != 1:
        raise UsageError(f"{len(live)} enrolled devices are named {which!r}: give its id")
    return await it.device_record(remote, admin, live[0].device)
