"""Fuzzing the VM recipe parser (``provision.spec``) and the daemons' configuration files.

A recipe arrives as text over D-Bus from any local user, or as a file in
``/etc/vmclient/recipes``; a configuration file is the admin's.

Seeds are the shipped recipes.  They are mutated as TOML trees (re-serialised
with inline tables, so every mutated tree is valid TOML and reaches the
validator) and as text (so the TOML decoder itself is fed broken input).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient import config
from vmclient.errors import VMClientError
from vmclient.power import config as power_config
from vmclient.provision import config as provision_config
from vmclient.provision import spec
from vmclient.sync import config as sync_config

from .mutate import mutated_bytes, mutated_tree, outcome, toml_doc

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes").glob("*/recipe.toml"))
PRIVATE = """format = 1
name = "mine"
kind = "private"
vcpus = 1
memory_mib = 1024
[image]
iso = "/media/x.iso"
[[disks]]
name = "system"
role = "system"
size_gib = 20
[network]
zone = "private"
[power]
policy = "save"
[devices]
usb = "listed"
usb_allow = ["1050:0407"]
"""
# the shipped recipes (not installed with the ptest package: there, one of its own)
SEEDS = [p.read_text() for p in RECIPES] or [PRIVATE]


def test_the_serialiser_round_trips_the_seeds() -> None:
    for text in SEEDS:
        tree = tomllib.loads(text)
        assert tomllib.loads(toml_doc(tree)) == tree
        assert spec.parse(toml_doc(tree), "r.toml") == spec.parse(text, "r.toml")


@given(st.sampled_from(SEEDS).flatmap(lambda t: mutated_tree(tomllib.loads(t))))
def test_recipe_tree(tree: Any) -> None:
    outcome(spec.parse, toml_doc(tree), "(fuzzed recipe)")


@given(st.sampled_from(SEEDS).flatmap(lambda t: mutated_bytes(t.encode())))
@example(b"format = " + b"1" * 5000)  # ValueError: too many digits for int()
@example(b"x = " + b"[" * 3000)  # RecursionError
@example(b"x = " + b"{a = " * 3000)  # RecursionError
def test_recipe_text(raw: bytes) -> None:
    outcome(spec.parse, raw.decode("utf-8", "replace"), "(fuzzed recipe)")


def test_pathological_toml_is_refused_as_a_recipe_error_naming_the_file() -> None:
    for text, problem in [("format = " + "1" * 5000, "integer string conversion"),
                          ("x = " + "[" * 3000, "nested too deeply")]:
        err = outcome(spec.parse, text, "deep.toml")
        assert isinstance(err, spec.RecipeError)
        assert (err.path, err.key) == ("deep.toml", "(file)") and problem in err.problem


# --- the daemons' configuration files (/etc/vmclient/*.toml) ---------------------------------

CONFIGS = {"power": power_config.PowerConfig, "provision": provision_config.ProvisionConfig,
           "sync": sync_config.SyncConfig}
DATA = Path(__file__).resolve().parents[3] / "python-services" / "data" / "vmclient"


def config_seed(name: str, *, shipped: bool = True) -> str:
    """The shipped configuration file, or (in the ptest package) every setting's default."""
    if shipped and (DATA / f"{name}.toml").is_file():
        return (DATA / f"{name}.toml").read_text()
    tree: dict[str, Any] = {}
    for key, default, _help in config.describe(CONFIGS[name]):
        *tables, leaf = key.split(".")
        node = tree
        for t in tables:
            node = node.setdefault(t, {})
        node[leaf] = str(default) if isinstance(default, Path) else \
            dict(default) if isinstance(default, Mapping) else \
            list(default) if isinstance(default, tuple) else default
    return toml_doc(tree)


def test_the_config_seeds_load(tmp_path: Path) -> None:
    for name, cls in CONFIGS.items():
        for shipped in (True, False):
            (tmp_path / "c.toml").write_text(config_seed(name, shipped=shipped))
            assert config.load(cls, tmp_path / "c.toml") is not None


def load_config(name: str, raw: bytes) -> object:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{name}.toml"
        path.write_bytes(raw)
        result = outcome(config.load, CONFIGS[name], path)
    if not isinstance(result, VMClientError):
        assert all(math.isfinite(v) for v in floats(result)), result
    return result


def floats(value: Any) -> list[float]:
    """Every float setting of a configuration (nan passes every min/max check)."""
    if dataclasses.is_dataclass(value):
        return [f for field in dataclasses.fields(value)
                for f in floats(getattr(value, field.name))]
    return [value] if isinstance(value, float) else []


@given(st.sampled_from(sorted(CONFIGS)), st.data())
@example("sync", b"x = " + b"[" * 3000)  # RecursionError
@example("sync", b"x = " + b"1" * 5000)  # ValueError: too many digits for int()
@example("power", b"[battery]\ncritical_percent = " + b"9" * 400)  # OverflowError
@example("power", b"[battery]\ncritical_percent = nan")  # accepted: nan < min is false
def test_daemon_config(name: str, data: st.DataObject | bytes) -> None:
    text = config_seed(name)
    if isinstance(data, bytes):
        raw = data
    elif data.draw(st.booleans()):
        raw = toml_doc(data.draw(mutated_tree(tomllib.loads(text)))).encode()
    else:
        raw = data.draw(mutated_bytes(text.encode()))
    load_config(name, raw)
