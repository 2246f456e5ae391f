"""One ``[repository]`` section for every laptop daemon (issue 14): the same dataclass,
the same shipped values, and it opens the store ``open_store`` opens."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from testlib import DATA
from vmclient.errors import UsageError
from vmclient.provision import config as pconfig
from vmclient.store.localfs import LocalDirStore
from vmclient.sync import config as sconfig
from vmclient.transport import Repository


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
    from vmclient.manage.keys import ssh_identity
    made, _pub = ssh_identity(tmp_path)
    expected = Path(DEVICE_DIR) / made.relative_to(tmp_path)
    assert Repository().key_file == expected
    for n in ("provision", "sync"):
        shipped = tomllib.loads((DATA / "vmclient" / f"{n}.toml").read_text())["repository"]
        assert Path(shipped["key_file"]) == expected, n
