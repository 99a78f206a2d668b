"""Name → implementation registries, one per pluggable kind (the open-metric-learning pattern).

Each kind keeps one ``Registry`` beside its ``build_x`` function (``losses.LOSSES``,
``optim.OPTIMIZERS``, ``models.backbone.BACKBONES``, ``data.sources.SOURCES``, ...). The
config's allowed values are the registry keys: adding an entry is the only edit a new loss,
optimizer or data source needs.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry:
    """An ordered ``name → entry`` mapping for the config key ``key`` (e.g. ``"loss.name"``)."""

    def __init__(self, key: str, entries: dict[str, Any] | None = None) -> None:
        self.key = key
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` adds the decorated object under ``name``."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.key}: '{name}' is registered twice")
            self._entries[name] = obj
            return obj
        return add

    def check(self, name: str) -> None:
        """ConfigError naming the key and the valid names unless ``name`` is registered."""
        if name not in self._entries:
            raise ConfigError(f"{self.key}: '{name}' is not one of {', '.join(self._entries)}")

    def __getitem__(self, name: str) -> Any:
        self.check(name)
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self._entries)})"
