"""TOML configuration parsed into frozen, validated dataclasses.

Each daemon has one file, ``/etc/vmclient/<role>.toml``.  A configuration class
is a frozen dataclass; nested dataclasses are TOML tables.  Field metadata says
what is allowed (``choices``, ``min``, ``max``) and a one-line ``help``.  Every
error names the file and the dotted key and says what is allowed, for example::

    /etc/vmclient/power.toml: lid.on_battery: 'hibernate' is not one of
    'suspend', 'pause', 'ignore'

Unknown keys are errors too (a typo must not silently fall back to a default).
Nothing here reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def setting(default: Any, *, help: str, choices: tuple[Any, ...] = (),
            min: float | None = None, max: float | None = None) -> Any:
    """A dataclass field with validation metadata."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load(cls: type[T], path: str | Path, *, missing_ok: bool = True) -> T:
    """Read ``path`` into ``cls``; a missing file gives the defaults if ``missing_ok``."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if missing_ok:
            return cls()
        raise ConfigError(path, "", "file not found") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from exc
    try:
        untrusted_data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start})") from exc
    except ValueError as exc:  # TOMLDecodeError, or a number of more than 4300 digits
        raise ConfigError(path, "", f"not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigError(path, "", "not valid TOML: nested too deeply") from None
    return from_mapping(cls, untrusted_data, path)


def from_mapping(cls: type[T], untrusted_data: Mapping[str, Any], path: str | Path,
                 prefix: str = "") -> T:
    """Build ``cls`` from a parsed TOML table, validating every key."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(untrusted_data) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(path, prefix + unknown[0], f"unknown key (allowed here: {allowed})")
    values: dict[str, Any] = {}
    for name, untrusted_value in untrusted_data.items():
        f = fields[name]
        values[name] = _convert(hints[name], untrusted_value, path, prefix + name, f.metadata)
    try:
        return cls(**values)
    except ValueError as exc:  # __post_init__ cross-field checks
        raise ConfigError(path, prefix.rstrip(".") or "", str(exc)) from exc


def string_table(untrusted_data: Mapping[str, Any], known: tuple[str, ...],
                 path: str | Path) -> dict[str, str]:
    """A flat TOML table whose every value is a non-empty string, each key one of
    ``known`` (the admin's small files: ``admin.toml``, ``admin.pkcs11``)."""
    out: dict[str, str] = {}
    for key, value in untrusted_data.items():
        if key not in known:
            raise ConfigError(path, key, f"unknown setting (known: {', '.join(known)})")
        if not isinstance(value, str) or not value:
            raise ConfigError(path, key, "must be a non-empty string")
        out[key] = value
    return out


def _convert(hint: Any, untrusted: Any, path: str | Path, key: str,
             meta: Mapping[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(untrusted, dict):
            raise ConfigError(path, key, f"must be a table, not {_kind(untrusted)}")
        return from_mapping(hint, untrusted, path, key + ".")
    if origin in (dict, Mapping):
        key_t, val_t = typing.get_args(hint)
        if not isinstance(untrusted, dict):
            raise ConfigError(path, key, f"must be a table, not {_kind(untrusted)}")
        return types.MappingProxyType({
            _convert(key_t, k, path, key, {}): _convert(val_t, v, path, f"{key}.{k}", meta)
            for k, v in untrusted.items()
        })
    if origin in (tuple, list):
        (item_t, *_) = typing.get_args(hint)
        if not isinstance(untrusted, list):
            raise ConfigError(path, key, f"must be a list, not {_kind(untrusted)}")
        return tuple(_convert(item_t, v, path, f"{key}[{i}]", meta)
                     for i, v in enumerate(untrusted))
    value = _scalar(hint, untrusted, path, key)
    choices = meta.get("choices") or ()
    if choices and value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ConfigError(path, key, f"{value!r} is not one of {allowed}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(path, key, f"{value!r} is below the minimum {lo}")
    if hi is not None and value > hi:
        raise ConfigError(path, key, f"{value!r} is above the maximum {hi}")
    return value


def _scalar(hint: Any, untrusted: Any, path: str | Path, key: str) -> Any:
    if hint is bool:
        if isinstance(untrusted, bool):
            return untrusted
    elif hint is float:
        if isinstance(untrusted, (int, float)) and not isinstance(untrusted, bool):
            try:
                value = float(untrusted)
            except OverflowError:  # an integer beyond any float
                value = math.inf
            if not math.isfinite(value):  # nan would pass every min/max check
                raise ConfigError(path, key, f"must be a finite number, not {untrusted!r}")
            return value
    elif hint is int:
        if isinstance(untrusted, int) and not isinstance(untrusted, bool):
            return untrusted
    elif hint is str:
        if isinstance(untrusted, str):
            return untrusted
    elif hint is Path:
        if isinstance(untrusted, str) and untrusted:
            return Path(untrusted)
    else:
        raise TypeError(f"unsupported config type {hint!r} for {key}")
    want = {bool: "true or false", float: "a number", int: "a whole number",
            str: "a string", Path: "a path"}[hint]
    raise ConfigError(path, key, f"must be {want}, not {_kind(untrusted)} {untrusted!r}")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a whole number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every setting: for docs and ``--print-config``."""
    out: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(describe(hints[f.name], prefix + f.name + "."))
        else:
            out.append((prefix + f.name, getattr(default, f.name), f.metadata.get("help", "")))
    return out
