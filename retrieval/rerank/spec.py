"""Re-ranking choices by name: the ``RERANKERS`` registry and the ``NAME[:k=v,...]`` spec every flag shares.

``parse_rerank("kreciprocal:k1=20,k2=6,lambda=0.3")`` → ``RerankSpec("kreciprocal", {...})``
with every argument resolved (defaults filled, types and ranges checked); a bad name, argument
or value is a one-line ConfigError naming it. The config's ``rerank.name`` / ``rerank.args``
resolve through the same ``Method.resolve``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from ..registry import Registry
from .access import GalleryAccess
from .aqe import aqe
from .dba import augmented, dba, dba_aqe
from .kreciprocal import kreciprocal


def _plain(queries: np.ndarray, access: GalleryAccess, k: int, self_ids: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    return access.neighbours(queries, k, self_ids)


# What each argument must satisfy: name → (test, phrase for the error).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (lambda v: v > 0, "> 0"), "dba_n": (lambda v: v > 0, "> 0"),
    "alpha": (lambda v: v >= 0, ">= 0"), "dba_alpha": (lambda v: v >= 0, ">= 0"),
    "k1": (lambda v: v > 0, "> 0"), "k2": (lambda v: v > 0, "> 0"),
    "lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"), "candidates": (lambda v: v > 0, "> 0"),
}


@dataclass(frozen=True)
class Method:
    """A re-ranking function, its arguments with defaults, and how spec names map onto its keywords."""
    fn: Callable[..., tuple[np.ndarray, np.ndarray]]
    defaults: dict[str, Any] = field(default_factory=dict)
    keywords: dict[str, str] = field(default_factory=dict)  # spec name → keyword of ``fn`` ("lambda" → "lam")
    prepare: Callable[[GalleryAccess, dict[str, Any]], object] | None = None  # once-per-gallery work (DBA)

    def resolve(self, args: dict[str, Any] | None, prefix: str) -> dict[str, Any]:
        """``defaults`` updated by ``args``; ConfigError ``"{prefix}{arg} ..."`` for an unknown, mistyped, bad value."""
        out = dict(self.defaults)
        for name, value in (args or {}).items():
            if name not in self.defaults:
                raise ConfigError(f"{prefix}{name} is not an argument of this method "
                                  f"(allowed: {', '.join(self.defaults) or 'none'})")
            out[name] = _typed(f"{prefix}{name}", value, self.defaults[name])
        for name, value in out.items():
            test, phrase = _RULES[name]
            if not test(value):
                raise ConfigError(f"{prefix}{name} must be {phrase}, got {value!r}")
        if "k2" in out and out["k2"] > out["k1"]:
            raise ConfigError(f"{prefix}k2 must be <= k1={out['k1']}, got {out['k2']}")
        return out

    def call_args(self, args: dict[str, Any]) -> dict[str, Any]:
        return {self.keywords.get(name, name): value for name, value in args.items()}


def _typed(key: str, value: Any, default: Any) -> Any:
    """``value`` (a number, or text from a spec string) as the type of ``default``; floats must be finite."""
    try:
        if isinstance(default, int):
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not float(number).is_integer():
                raise ValueError
            return int(number)
        number = float(value)
        if isinstance(value, bool) or not math.isfinite(number):
            raise ValueError
        return number
    except (TypeError, ValueError):
        kind = "an integer" if isinstance(default, int) else "a finite number"
        raise ConfigError(f"{key} must be {kind}, got {value!r}") from None


# Defaults: αQE / DBA with α = 3 as Radenović et al. 2018 use (n small: fine-grained classes hold
# tens of images, not the hundreds of a landmark); k-reciprocal k1 = 20, k2 = 6, λ = 0.3 as
# Zhong et al. 2017 (§4.2). ``benchmarks/bench_rerank.py`` chooses them on validation classes.
RERANKERS = Registry("rerank.name", {
    "none": Method(_plain),
    "aqe": Method(aqe, {"n": 2, "alpha": 3.0}),
    "dba": Method(dba, {"n": 2, "alpha": 3.0}, prepare=lambda access, a: augmented(access, a["n"], a["alpha"])),
    "dba_aqe": Method(dba_aqe, {"n": 2, "alpha": 3.0, "dba_n": 2, "dba_alpha": 3.0},
                      prepare=lambda access, a: augmented(access, a["dba_n"], a["dba_alpha"])),
    "kreciprocal": Method(kreciprocal, {"k1": 20, "k2": 6, "lambda": 0.3, "candidates": 100},
                          keywords={"lambda": "lam"}),
})


@dataclass(frozen=True)
class RerankSpec:
    """A resolved choice: registry name and every argument's value."""
    name: str = "none"
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name + (":" + ",".join(f"{k}={v:g}" for k, v in self.args.items()) if self.args else "")

    @property
    def method(self) -> Method:
        return RERANKERS[self.name]


def resolve_rerank(name: str, args: dict[str, Any] | None = None, key: str = "rerank") -> RerankSpec:
    """A checked ``RerankSpec``; ConfigError naming ``key.name`` (unknown name) or ``key.args.arg`` (bad argument)."""
    if name not in RERANKERS:
        raise ConfigError(f"{key}.name: '{name}' is not one of {', '.join(RERANKERS)}")
    return RerankSpec(name, RERANKERS[name].resolve(args, f"{key}.args."))


def parse_rerank(text: str, key: str = "--rerank") -> RerankSpec:
    """``NAME[:arg=value,...]`` (e.g. ``kreciprocal:k1=20,k2=6,lambda=0.3``) → a resolved ``RerankSpec``."""
    name, _, rest = str(text).strip().partition(":")
    args: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        arg, sep, value = item.partition("=")
        if not sep or not arg.strip() or not value.strip():
            raise ConfigError(f"{key} {text}: expected NAME[:arg=value,...], e.g. kreciprocal:k1=20,k2=6,lambda=0.3; "
                              f"got '{item}'")
        args[arg.strip()] = value.strip()
    name = name.strip()
    if name not in RERANKERS:
        raise ConfigError(f"{key}: '{name}' is not one of {', '.join(RERANKERS)}")
    return RerankSpec(name, RERANKERS[name].resolve(args, f"{key} {name}: "))
