"""kas.yml, its lock file and the overlays match kas's own JSON schema and
pin every upstream repository by branch and full commit."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from .layerutil import REPO, require_module

pytestmark = pytest.mark.layer

KAS_FILES = [REPO / "kas.yml", REPO / "kas.lock.yml", *sorted((REPO / "conf" / "kas").glob("*.yml"))]
FULL_SHA = re.compile(r"[0-9a-f]{40}")

# The upstream repositories kas.yml must pin (FIELD-NOTES: the "bitbake" key
# must be exactly that).
UPSTREAM = {"bitbake", "openembedded-core", "meta-openembedded", "meta-virtualization", "meta-yocto",
            "meta-rauc"}


def _load(path):
    yaml = require_module("yaml")
    with path.open() as f:
        return yaml.safe_load(f)


def _schema():
    require_module("kas")
    return json.loads(resources.files("kas").joinpath("schema-kas.json").read_text())


@pytest.mark.parametrize("path", KAS_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_kas_file_matches_the_kas_schema(path):
    jsonschema = require_module("jsonschema")
    jsonschema.validate(_load(path), _schema())


def test_kas_schema_rejects_a_broken_file():
    jsonschema = require_module("jsonschema")
    broken = _load(REPO / "kas.yml")
    broken["repos"]["bitbake"]["branchh"] = "typo"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _schema())


def test_kas_yml_builds_the_vmclient_image_with_the_vmclient_distro():
    cfg = _load(REPO / "kas.yml")
    assert cfg["distro"] == "vmclient"
    assert cfg["target"] == "vmclient-image"
    assert cfg["machine"]
    assert cfg["repos"]["vmclient"].get("url") is None, "this repository is listed without url"
    assert "meta-vmclient" in cfg["repos"]["vmclient"]["layers"]


def test_every_upstream_repo_is_pinned_by_branch_and_full_commit():
    repos = _load(REPO / "kas.yml")["repos"]
    upstream = {name for name, repo in repos.items() if repo and repo.get("url")}
    assert upstream == UPSTREAM
    for name in sorted(upstream):
        assert repos[name].get("branch"), f"{name}: no branch"
        assert FULL_SHA.fullmatch(repos[name].get("commit", "")), f"{name}: no full commit"


def test_lock_file_agrees_with_kas_yml():
    repos = _load(REPO / "kas.yml")["repos"]
    locked = _load(REPO / "kas.lock.yml")["overrides"]["repos"]
    assert {n: r["commit"] for n, r in locked.items()} == {
        n: r["commit"] for n, r in repos.items() if r and r.get("url")
    }


def test_debug_settings_stay_in_dev_yml():
    for path in KAS_FILES:
        if path.name == "dev.yml":
            continue
        text = path.read_text()
        for feature in ("empty-root-password", "allow-empty-password", "allow-root-login", "debug-tweaks"):
            assert feature not in text, f"{path.relative_to(REPO)} enables {feature}"
