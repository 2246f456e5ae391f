"""Input generators of the parser fuzz tests: valid documents, mutated until they break.

A parser is reached deeply by inputs that are *almost* valid, so every
generator starts from a valid document and applies a few mutations: a field
removed, added or replaced by a value of another type (huge and negative
numbers, floats, unicode, nesting), then optionally the serialised bytes
flipped, cut, spliced or given a pathological token (a 5000-digit number,
100000 nested brackets, an infinite float).  ``outcome`` is the one
acceptance rule: the parser returns (an object that can be written back), or
raises the project's own error.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import strategies as st

from vmclient.errors import VMClientError

T = TypeVar("T")

# values a field may be replaced with: every JSON type, edge numbers, odd text
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.sampled_from([0, -1, 1, 2**31, 2**32, 2**63, 2**64, -2**63, 10**300]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -10**400]),
    st.text(max_size=40),
    st.sampled_from(["", "é", "\u202e", "a/../b", "\x00", "x" * 300, "\ud800", "a\udfff"]),
)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

# tokens that break decoders rather than validators
POISON = [b"1" * 5000, b"-" + b"9" * 4400, b"[" * 3000, b"{\"a\":" * 3000, b"1e999",
          b"-1e999", b"NaN", b"Infinity", b"\"\\ud800\"", b"\xff\xfe", b"\xc3", b"\"\\u0000\"",
          b"0.0", b"true", b"null", b"\"" + b"A" * 70000 + b"\""]


def _slots(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON tree, depth first."""
    if isinstance(value, dict):
        for k in list(value):
            out.append((value, k))
            _slots(value[k], out)
    elif isinstance(value, list):
        for i in range(len(value)):
            out.append((value, i))
            _slots(value[i], out)
    return out


@st.composite
def mutated_tree(draw: st.DrawFn, doc: Any, *, max_mutations: int = 4) -> Any:
    """``doc`` (a JSON tree) after 0..``max_mutations`` structural mutations."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(0, max_mutations))):
        slots = _slots(doc, [])
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["delete", "replace", "add", "wrap", "dup", "swap_text"]))
        if op == "delete":
            del container[key]
        elif op == "replace":
            container[key] = draw(JSON_VALUES)
        elif op == "add":
            if isinstance(container, dict):
                container[draw(st.text(max_size=10))] = draw(JSON_VALUES)
            else:
                container.insert(key, draw(JSON_VALUES))
        elif op == "wrap":  # the right value, the wrong shape
            container[key] = draw(st.sampled_from([[container[key]], {"": container[key]}]))
        elif op == "dup" and isinstance(container, list):
            container.append(copy.deepcopy(container[key]))
        elif op == "swap_text" and isinstance(container[key], str):
            text = container[key]
            container[key] = draw(st.sampled_from([text.upper(), text + "é", text[:-1],
                                                   text + "=", "é" + text[1:], text * 3,
                                                   text + "\ud800"]))
    return doc


@st.composite
def mutated_bytes(draw: st.DrawFn, data: bytes, *, max_mutations: int = 4) -> bytes:
    """``data`` after 0..``max_mutations`` byte-level mutations."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, max_mutations))):
        op = draw(st.sampled_from(["flip", "set", "cut", "truncate", "insert", "poison",
                                   "splice"]))
        pos = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del buf[pos:pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "poison":
            buf[pos:pos + draw(st.integers(0, 8))] = draw(st.sampled_from(POISON))
        elif op == "splice" and buf:
            start = draw(st.integers(0, len(buf) - 1))
            buf[pos:pos] = buf[start:start + draw(st.integers(1, 64))]
    return bytes(buf)


@st.composite
def mutated_json(draw: st.DrawFn, doc: dict[str, Any]) -> bytes:
    """A valid JSON document mutated in structure and/or in its bytes."""
    tree = draw(mutated_tree(doc))
    raw = json.dumps(tree, ensure_ascii=draw(st.booleans()),  # (a lone surrogate: \ud800,
                     sort_keys=draw(st.booleans())).encode("utf-8", "surrogatepass")  # or not UTF-8)
    if draw(st.booleans()):
        raw = draw(mutated_bytes(raw))
    return raw


def outcome(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | VMClientError:
    """``fn``'s result, or the :class:`VMClientError` it raised; anything else propagates
    (a bug: the fuzz test fails with it)."""
    try:
        result = fn(*args, **kwargs)
    except VMClientError as exc:
        str(exc)  # the message is formatted when shown: it must not fail either
        return exc
    for value in result if isinstance(result, (list, tuple)) else (result,):
        if hasattr(value, "to_bytes") and not isinstance(value, int):
            value.to_bytes()  # what was read can be written again (a parent's fields are)
    return result


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
