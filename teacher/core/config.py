"""Typed configs: dataclasses loaded from YAML, with ``key=value`` overrides.

Shared by every job (student training, eval suites, experiments). Nested
dataclasses are filled recursively; fields typed ``dict`` pass through as plain
mappings (how TRL's ``SFTConfig`` and peft's ``LoraConfig`` settings travel).
Unknown keys are errors with a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the key."""


def did_you_mean(name: str, known: Iterable[str], n: int = 1) -> str:
    """``"; did you mean 'x'?"`` naming up to ``n`` of ``known`` closest to ``name``
    (difflib's default cutoff), or ``""``: the one spelling of every unknown-name hint."""
    return suggestion(difflib.get_close_matches(name, list(known), n=n))


def suggestion(close: Sequence[str]) -> str:
    """``"; did you mean 'a' or 'b'?"`` for candidates already chosen, or ``""``."""
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values are YAML)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: use key=value")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {pair!r}: {part} is not a mapping")
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return tree


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "", start: T | None = None) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys recursively; the keys
    given override ``start`` (default: the type's own defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            raise ConfigError(f"unknown config key {where!r}{did_you_mean(key, fields)}")
        default = fields[key].default_factory
        base = default() if default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(base) and isinstance(value, Mapping | None):
            # A section whose default differs from its type's: keys given override it.
            value = from_dict(type(base), value or {}, where, base)
        else:
            value = _coerce(hints[key], value, where)
        if isinstance(value, Mapping) and isinstance(base, Mapping):
            value = deep_merge(base, value)  # pass-through mappings: override key by key
        kwargs[key] = value
    try:
        return dataclasses.replace(start, **kwargs) if start is not None else cls(**kwargs)
    except TypeError as exc:  # a required field missing
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        if len(args) == 1:
            return _coerce(args[0], value, where)
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if (hint is tuple or origin is tuple) and isinstance(value, list):
        return tuple(value)
    return value


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: Sequence[str] = ()) -> T:
    """YAML file (optional) + ``key=value`` overrides -> a ``cls`` instance."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded
    data = deep_merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (for manifests and resolved-config files)."""
    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))
