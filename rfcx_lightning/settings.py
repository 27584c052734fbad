"""Typed views of config blocks: a stage builds one settings object from its block, once.

The defaults live in the configuration tree (``stages/``), each written once; the dataclasses that use
:func:`from_block` carry none of their own. So a key the block lacks, or a key the dataclass does not know
(a misspelling in a recipe, or one added with ``+key=value``), is an error naming the block and the key,
instead of a silent fallback to a second default somewhere in the code. Values are checked against the
field's type (``int``, ``float``, ``bool``, ``str``, ``X | None``, a nested settings dataclass); anything
else (lists, mappings, unions of several types) passes through as given.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping, TypeVar

from omegaconf import DictConfig, OmegaConf

__all__ = ["from_block"]

T = TypeVar("T")


def from_block(cls: type[T], block: Mapping[str, Any] | DictConfig, name: str) -> T:
    """``cls`` built from the config block ``name`` (a ``DictConfig`` or a plain mapping), every key checked."""
    raw = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block or {})
    if not isinstance(raw, dict):
        raise ValueError(f"{name} must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown key(s) {', '.join(f'{name}.{k}' for k in unknown)}; "
                         f"the block takes {', '.join(fields)}")
    missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{name}: missing key(s) {', '.join(f'{name}.{k}' for k in missing)} "
                         "(the recipe in stages/ should set them)")
    hints = typing.get_type_hints(cls)
    values = {k: _checked(hints[k], v, f"{name}.{k}") for k, v in raw.items()}
    return cls(**values)


def _checked(kind: Any, value: Any, key: str) -> Any:
    """``value`` as ``kind`` where that is one of the simple types; an error naming ``key`` if it is not."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _checked(rest[0], value, key)
        return value
    if dataclasses.is_dataclass(kind):
        return from_block(kind, value, key)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}={value!r}: expected an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}={value!r}: expected a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{key}={value!r}: expected a string")
        return value
    return value
