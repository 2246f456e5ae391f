"""The vmclient-services ptest works as installed: the recipe's
do_install_ptest, run over what its SRC_URI fetches, gives a tree in which
the unit tests that read files of the repository (recipes, test vectors,
default configuration) and import the shared test helpers pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from . import bbvars
from .layerutil import LAYER, REPO, SERVICES

pytestmark = pytest.mark.layer

RECIPE = LAYER / "recipes-vmclient" / "vmclient-services" / "vmclient-services.bb"
PTEST_PATH = "/usr/lib/vmclient-services/ptest"

# Unit tests that read files relative to themselves or import testlib.
FILE_READING_TESTS = [
    "tests/unit/provision/test_spec.py",
    "tests/unit/provision/test_domainxml.py",
    "tests/unit/provision/test_provision_core.py",
    "tests/unit/store/test_crypto.py",
    "tests/unit/sync/test_syncd_policy.py",
    "tests/unit/cli/test_vmclientctl.py",
    "tests/unit/cli/test_manpages_completion.py",
]


def fetch(unpackdir: Path) -> None:
    """What the fetcher unpacks for SRC_URI: file://X from the recipe's
    files/ directory or the repository root (FILESEXTRAPATHS), as X."""
    for url in bbvars.words(RECIPE, "SRC_URI"):
        name = url.removeprefix("file://").split(";")[0]
        for base in (RECIPE.parent / "files", REPO):
            source = base / name
            if source.exists():
                break
        else:
            raise AssertionError(f"SRC_URI {url}: found neither in files/ nor at the repository root")
        target = unpackdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)


def install_ptest(unpackdir: Path, dest: Path) -> Path:
    text = RECIPE.read_text()
    m = re.search(r"^do_install_ptest\(\) \{\n(?P<body>.*?)^\}", text, re.M | re.S)
    assert m, "vmclient-services.bb has no do_install_ptest"
    body = m.group("body")
    values = {"D": str(dest), "PTEST_PATH": PTEST_PATH, "UNPACKDIR": str(unpackdir),
              "S": str(unpackdir / "python-services")}
    body = re.sub(r"\$\{(\w+)\}", lambda v: values[v.group(1)], body)
    subprocess.run(["sh", "-e", "-c", body], check=True, timeout=60)
    return dest / PTEST_PATH.lstrip("/")


def test_ptest_tree_runs_the_unit_tests_that_read_repository_files(tmp_path):
    unpackdir = tmp_path / "sources"
    fetch(unpackdir)
    ptest = install_ptest(unpackdir, tmp_path / "image")
    assert os.access(ptest / "run-ptest", os.X_OK)
    # The services come from the installed package on the target; here from
    # the repository's sources, put on the path the same way.
    env = {**os.environ, "PYTHONPATH": str(SERVICES / "src")}
    env.pop("CI", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "not integration",
         *FILE_READING_TESTS],
        cwd=ptest, env=env, capture_output=True, text=True, timeout=240, check=False)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
    assert proc.returncode == 0, f"the ptest tree's unit tests failed:\n{tail}"
    assert re.search(r"\b\d+ passed\b", proc.stdout), tail
