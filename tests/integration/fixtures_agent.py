"""A real ssh-agent, and a SoftHSM 2 token, for the admin's keys (docs/admin-cli.md
"ssh-agent" and "Keys on a PKCS#11 token").

* :func:`ssh_agent`: ``ssh-agent -D -a SOCKET`` in the foreground (its pid is ours to
  end), on a short path: a unix socket's path has at most 107 bytes, pytest's
  ``tmp_path`` can be longer.
* :class:`SoftHSM`: one token directory and ``SOFTHSM2_CONF`` for a whole test module
  (python-pkcs11 initialises the module once per process, reading the configuration
  then), a token ``vmclient-admin`` initialised with ``softhsm2-util``, key pairs made
  on it with python-pkcs11 as a token's own tools would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testlib import need

SOFTHSM_MODULE = next((p for p in ("/usr/lib/softhsm/libsofthsm2.so",
                                   "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
                       if Path(p).exists()), "")
TOKEN = "vmclient-admin"
PIN = "24681357"
ED25519_OID = b"\x06\x03\x2b\x65\x70"  # DER of 1.3.101.112 (RFC 8410), as CKA_EC_PARAMS
P256_OID = b"\x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07"  # DER of 1.2.840.10045.3.1.7


@contextlib.contextmanager
def ssh_agent(env: dict[str, str] | None = None) -> Iterator[Path]:
    need(shutil.which("ssh-agent") is not None and shutil.which("ssh-add") is not None,
         "OpenSSH's ssh-agent/ssh-add are missing (openssh-client)")
    where = Path(tempfile.mkdtemp(prefix="agent-"))
    sock = where / "sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    try:
        deadline = time.monotonic() + 10
        while not sock.is_socket():
            assert proc.poll() is None and time.monotonic() < deadline, "ssh-agent did not start"
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(where, ignore_errors=True)


def ssh_add(sock: Path, *argv: str, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(["ssh-add", *argv], env={**os.environ, **(env or {}),
                                                "SSH_AUTH_SOCK": str(sock)},
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode == 0, r.stderr


class SoftHSM:
    def __init__(self, base: Path) -> None:
        need(bool(SOFTHSM_MODULE) and shutil.which("softhsm2-util") is not None,
             "SoftHSM 2 is missing (scripts/setup-host installs softhsm2)")
        try:
            import pkcs11  # noqa: F401
        except ImportError:
            need(False, "python-pkcs11 is missing (requirements-test.txt)")
        self.module = SOFTHSM_MODULE
        tokens = base / "tokens"
        tokens.mkdir(parents=True)
        self.conf = base / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                             "log.level = ERROR\n")
        self.env = {"SOFTHSM2_CONF": str(self.conf)}
        subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin",
                        PIN, "--so-pin", "13572468"], check=True, capture_output=True,
                       env={**os.environ, **self.env})

    def _session(self) -> Any:
        """A read-write session, logged in (once per process: vmclient.admin.token keeps
        its session, and a PKCS#11 login is the process's, across its sessions)."""
        import pkcs11
        token = pkcs11.lib(self.module).get_token(token_label=TOKEN)
        try:
            return token.open(rw=True, user_pin=PIN)
        except pkcs11.exceptions.UserAlreadyLoggedIn:
            return token.open(rw=True)

    def ed25519(self, label: str) -> bytes:
        """A new Ed25519 key pair on the token; its raw public key."""
        import pkcs11
        from asn1crypto.core import OctetString
        with self._session() as s:
            params = s.create_domain_parameters(
                pkcs11.KeyType.EC_EDWARDS, {pkcs11.Attribute.EC_PARAMS: ED25519_OID}, local=True)
            pub, _priv = params.generate_keypair(
                store=True, label=label, mechanism=pkcs11.Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                public_template={pkcs11.Attribute.PRIVATE: False})
            point = bytes(pub[pkcs11.Attribute.EC_POINT])
        return point if len(point) == 32 else bytes(OctetString.load(point).native)

    def ecdsa(self, label: str, key_id: bytes) -> None:
        """A new ECDSA P-256 key pair on the token (what OpenSSH's PKCS#11 code reads)."""
        import pkcs11
        with self._session() as s:
            params = s.create_domain_parameters(
                pkcs11.KeyType.EC, {pkcs11.Attribute.EC_PARAMS: P256_OID}, local=True)
            params.generate_keypair(store=True, label=label, id=key_id,
                                    public_template={pkcs11.Attribute.PRIVATE: False})

    def ssh_public_keys(self) -> list[str]:
        """``ssh-keygen -D``: the token's keys as OpenSSH public key lines."""
        r = subprocess.run(["ssh-keygen", "-D", self.module], capture_output=True, text=True,
                           env={**os.environ, **self.env}, check=True, timeout=30)
        return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


@contextlib.contextmanager
def softhsm() -> Iterator[SoftHSM]:
    """A SoftHSM token; ``SOFTHSM2_CONF`` is set in this process while it lasts."""
    base = Path(tempfile.mkdtemp(prefix="softhsm-"))
    old = os.environ.get("SOFTHSM2_CONF")
    try:
        hsm = SoftHSM(base)
        os.environ.update(hsm.env)
        yield hsm
    finally:
        if old is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = old
        shutil.rmtree(base, ignore_errors=True)
