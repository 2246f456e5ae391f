"""One ``[repository]`` section for every laptop daemon (issue 14): the same dataclass,
the same shipped values, and it opens the store ``open_store`` opens."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from testlib import DATA
from vmclient.errors import UsageError
from vmclient.provision import config as pconfig
from vmclient.sync import config as sconfig
from vmclient.transport import Repository
from vmclient.transport.localfs import LocalDirStore


def test_provd_and_syncd_share_the_section() -> None:
    assert pconfig.ProvisionConfig().repository == sconfig.SyncConfig().repository
    shipped = [tomllib.loads((DATA / "vmclient" / f"{n}.toml").read_text())["repository"]
               for n in ("provision", "sync")]
    assert shipped[0] == shipped[1]


def test_provision_toml_takes_an_sftp_url(tmp_path: Path) -> None:
    path = tmp_path / "provision.toml"
    path.write_text('[repository]\nlocation = "sftp://dev@dc.example:2222/"\n'
                    f'key_file = "{tmp_path}/k"\nknown_hosts = "{tmp_path}/kh"\n')
    r = pconfig.load(path).repository
    assert r == Repository("sftp://dev@dc.example:2222/", tmp_path / "k", tmp_path / "kh")
    store = r.open()
    assert type(store).__name__ == "SFTPStore"  # nothing is contacted before a request


def test_a_directory_opens_locally(tmp_path: Path) -> None:
    assert isinstance(Repository(str(tmp_path)).open(), LocalDirStore)
    with pytest.raises(UsageError, match="unsupported repository URL"):
        Repository("https://dc.example/repo").open()


def test_the_default_ssh_key_is_the_one_enrolment_makes(tmp_path: Path) -> None:
    """``vmclientctl enrol`` makes the SFTP login key in the device directory; the
    daemons' default ``key_file`` (and the shipped files') must be that file, or an
    enrolled laptop cannot log in to its account."""
    from vmclient.cli.manage import DEVICE_DIR
    from vmclient.host.keys import ssh_identity
    made, _pub = ssh_identity(tmp_path)
    expected = Path(DEVICE_DIR) / made.relative_to(tmp_path)
    assert Repository().key_file == expected
    for n in ("provision", "sync"):
        shipped = tomllib.loads((DATA / "vmclient" / f"{n}.toml").read_text())["repository"]
        assert Path(shipped["key_file"]) == expected, n


def test_a_url_without_user_is_the_devices_own_account_once_enrolled(tmp_path: Path) -> None:
    """One shipped location for every laptop: ``sftp://host/`` logs in as this device's
    account, ``vmc-<first 12 hex of its id>`` as the admin confines it, named from the
    device id the enrolment wrote into the management state; before that, a clear error
    (at the first login, not at start: syncd must run to be enrolled).  A user in the
    URL still wins; without one and without the device's rule it is a usage error."""
    from vmclient.admin.sshd import confinement
    from vmclient.host.lease import DeviceState, NotEnrolled, StateFile, device_account
    from vmclient.store.layout import account_name

    device = "0123456789abcdef0123456789abcdef"
    assert account_name(device) == "vmc-0123456789ab"
    assert confinement(device, "ssh-ed25519 AAAAC3Nza d", "/r", "/k").account == \
        account_name(device)  # the admin side names it by the same rule

    manage = tmp_path / "manage"
    rule = device_account(manage, "sftp://dc.example/")
    r = Repository("sftp://dc.example:2222/", tmp_path / "k", tmp_path / "kh")
    store = r.open(account=rule)
    target = store.target  # type: ignore[attr-defined]
    with pytest.raises(NotEnrolled, match=r"not enrolled yet.*vmclientctl enrol") as exc:
        _ = target.endpoint  # what the first login asks
    assert "sftp://dc.example/" in exc.value.message
    StateFile(manage).save(DeviceState(device=device))  # vmclientctl enrol / Enrol
    assert target.endpoint.user == "vmc-0123456789ab"
    assert target.server == "vmc-0123456789ab@dc.example:2222"
    assert (target.endpoint.host, target.endpoint.port, target.root) == ("dc.example", 2222, "/")

    explicit = Repository("sftp://admin@dc.example/", tmp_path / "k", tmp_path / "kh")
    assert explicit.open(account=rule).target.endpoint.user == "admin"  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match="needs user@host"):
        r.open()
