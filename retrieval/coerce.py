"""The one set of type rules for configured values.

A config key is checked against its annotation in ``schema.py`` (``optim.lr: float``), a loss's
or miner's argument against the type of its default (``loss.args.margin`` is a float because its
default 0.1 is): both go through ``coerce``, so ``optim.lr=1e-4`` and ``loss.args.margin=1e-4``
are read the same way. (A ``--rerank NAME:k=v`` spec is text by nature; ``rerank.spec`` reads it.)
"""
from __future__ import annotations

import math
import types
import typing
from typing import Any

from .errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(key: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the type ``tp`` (an annotation or a plain type); ConfigError naming ``key``.

    int → float and the text of a number → float are the only conversions (YAML 1.1 reads ``1e-4``,
    without a dot, as a string); floats must be finite; a number may stand for a string.
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0])
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:  # per-choice arguments: their names and types are checked by the registry entry
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of arguments (e.g. {{margin: 0.1}}), got {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"{key}: must be a finite number, got {value!r}")
            return number
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
