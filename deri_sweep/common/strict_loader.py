"""Strict dataclass configs: build from YAML/dicts, apply ``--set a.b=c`` overrides.

Every config in deri-sweep is a (nested) dataclass. :func:`from_dict` builds one
from plain data and rejects unknown keys and wrong types with an error that
names the offending path and the source file, so a typo in a YAML file or on
the command line never silently falls back to a default.

Example:
    >>> @dataclass
    ... class Opt:
    ...     lr: float = 1e-3
    >>> apply_overrides(Opt(), ["lr=0.01"]).lr
    0.01
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, Union

import yaml

T = TypeVar("T")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class ConfigError(ValueError):
    """A config value, key or file that cannot be used; the message names it."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check (and gently convert) ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{path}: {value!r} is not a valid {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path=path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        inner = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, inner, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            number = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, strictly.

    Args:
        cls: a dataclass type (fields may be nested dataclasses).
        data: values by field name; missing fields take their defaults.
        path: dotted prefix used in error messages.

    Returns:
        A validated instance of ``cls``.

    Raises:
        ConfigError: unknown key or value of the wrong type (the message names
            the dotted key and the allowed keys).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key(s) {unknown}{where}; allowed: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{path or cls.__name__}: {exc}") from exc


def to_dict(config: Any) -> dict[str, Any]:
    """Turn a dataclass config into plain dicts/lists (YAML/JSON-safe)."""
    return dataclasses.asdict(config)


class Override(NamedTuple):
    """One ``a.b=c`` override, parsed once: the dotted key, its typed value, and how it was given.

    Attributes:
        keys: the dotted key split (``("interaction", "depth")``).
        value: the value as YAML read it (``4``, ``True``, ``[0.1, 1.0]``, ``None``), or as given.
        text: the command-line text (``"interaction.depth=4"``), which an error names as
            ``--set interaction.depth=4``; empty for a value a file gave (its errors name the key).
    """

    keys: tuple[str, ...]
    value: Any
    text: str = ""

    @property
    def key(self) -> str:
        """The dotted key."""
        return ".".join(self.keys)

    @classmethod
    def of(cls, key: str, value: Any) -> Override:
        """An override from a key and an already typed value (a space's ``base`` or variant entry)."""
        return cls(tuple(key.split(".")), value)

    def named(self, message: str) -> str:
        """``message`` naming this override: ``--set a.b=c: message`` when it came from the command line."""
        return f"--set {self.text}: {message}" if self.text else message


def parse_override(text: str) -> Override:
    """Parse ``"a.b=c"`` from the command line; the value is read as YAML.

    Raises:
        ConfigError: when there is no ``=`` or no key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    return Override(tuple(key.strip().split(".")), yaml.safe_load(raw) if raw.strip() else "", text)


def with_overrides(config: T, overrides: Iterable[Override]) -> T:
    """Return a copy of ``config`` with typed overrides applied and validated (the one way to apply them).

    Args:
        config: a dataclass instance.
        overrides: parsed overrides (:func:`parse_override`, :meth:`Override.of`).

    Raises:
        ConfigError: unknown key or wrong type, naming the override.
    """
    overrides = list(overrides)
    data = to_dict(config)
    for override in overrides:
        node = data
        for i, key in enumerate(override.keys[:-1]):
            if not isinstance(node.get(key), dict):
                raise ConfigError(override.named(f"{'.'.join(override.keys[: i + 1])} is not a config section"))
            node = node[key]
        if override.keys[-1] not in node:
            raise ConfigError(override.named(f"unknown key {override.key}; allowed here: {sorted(node)}"))
        node[override.keys[-1]] = override.value
    try:
        return from_dict(type(config), data)
    except ConfigError as exc:  # name the override whose value is wrong
        culprit = [o for o in overrides if str(exc).startswith(o.key + ":")]
        raise ConfigError(culprit[-1].named(str(exc)) if culprit else str(exc)) from exc


def apply_overrides(config: T, overrides: list[str] | tuple[str, ...]) -> T:
    """Return a copy of ``config`` with command-line ``a.b=c`` overrides applied and validated.

    Args:
        config: a dataclass instance.
        overrides: strings like ``"interaction.depth=4"``; values parse as YAML
            (``true``, ``0.5``, ``[1, 2]``, ``null``).

    Raises:
        ConfigError: unknown key or wrong type, naming the override.
    """
    return with_overrides(config, [parse_override(text) for text in overrides])


def load_yaml(cls: type[T], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load a dataclass config from a YAML file, then apply overrides.

    Raises:
        ConfigError: unreadable file, invalid YAML, unknown key or wrong type;
            the message starts with the file path.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        config = from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return apply_overrides(config, overrides) if overrides else config
