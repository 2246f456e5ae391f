"""Fuzzing the VM recipe parser (``provision.spec``): a recipe arrives as text over D-Bus
from any local user, or as a file in ``/etc/vmclient/recipes``.

Seeds are the shipped recipes.  They are mutated as TOML trees (re-serialised
with inline tables, so every mutated tree is valid TOML and reaches the
validator) and as text (so the TOML decoder itself is fed broken input).
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from vmclient.provision import spec

from .mutate import mutated_bytes, mutated_tree, outcome

RECIPES = sorted((Path(__file__).resolve().parents[3] / "recipes").glob("*/recipe.toml"))
SEEDS = [p.read_text() for p in RECIPES]


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (inline tables and arrays; no null in TOML: an empty string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")) \
            if not math.isfinite(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (same escapes)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return '""'


def toml_doc(tree: Any) -> str:
    if not isinstance(tree, dict):
        return f"x = {toml_value(tree)}\n"
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in tree.items())


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
