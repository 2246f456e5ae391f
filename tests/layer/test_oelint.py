"""oelint-adv is clean on every recipe and bbappend of meta-vmclient."""

from __future__ import annotations

import configparser
import os
import re
import subprocess

import pytest

from .layerutil import LAYER, REPO, recipes, require_executable

pytestmark = pytest.mark.layer

CONFIG = REPO / ".oelint.cfg"


def test_oelint_adv_finds_nothing():
    oelint = require_executable("oelint-adv")
    env = {**os.environ, "OELINT_CONFIG": str(CONFIG)}
    proc = subprocess.run(
        [oelint, "--release", "wrynose", "--mode", "all", "--quiet", "--relpaths",
         *[str(p.relative_to(REPO)) for p in recipes()]],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    findings = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not findings, f"oelint-adv (exit {proc.returncode}):\n{findings}"


def test_every_suppression_in_the_config_has_a_reason():
    parser = configparser.ConfigParser()
    parser.read(CONFIG)
    assert parser.get("oelint", "release") == "wrynose"
    lines = CONFIG.read_text().splitlines()
    rule_lines = [i for i, line in enumerate(lines) if re.fullmatch(r"\s+oelint\.[\w.-]+", line)]
    assert rule_lines, "no suppressions found: did the config format change?"
    for i in rule_lines:
        # Walk up over sibling rules to the comment that explains the group.
        j = i - 1
        while j >= 0 and re.fullmatch(r"\s+oelint\.[\w.-]+", lines[j]):
            j -= 1
        assert lines[j].strip().startswith("#"), f".oelint.cfg:{i + 1}: {lines[i].strip()} has no reason"


def test_every_inline_suppression_has_a_reason():
    for recipe in LAYER.rglob("*.bb*"):
        lines = recipe.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# nooelint:"):
                above = lines[i - 1] if i else ""
                assert above.startswith("#") and not above.startswith("# nooelint:"), (
                    f"{recipe.relative_to(REPO)}:{i + 1}: inline suppression without a reason above it"
                )
