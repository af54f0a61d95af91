"""A small generic registry: decorator registration, ``create`` by name and ``names``.

Every package of the project (attacks, defenses, models) keeps one ``Registry`` so that
configs and users reach objects by name, and tests can be parametrised over every entry.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) that build a ``T``.

    Args:
        kind: What the registry holds, used in error messages (e.g. ``"attack"``).

    Example:
        >>> MODELS: Registry[object] = Registry("model")
        >>> @MODELS.register("tiny")
        ... class Tiny: ...
        >>> MODELS.names()
        ['tiny']

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Return a decorator that registers a factory under ``name``.

        Raises:
            ValueError: If ``name`` is already taken.

        """
        key = name.lower()

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if key in self._entries and self._entries[key] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``.

        Raises:
            ValueError: For an unknown name; the message lists the known names.

        """
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key not in self._entries:
            close = difflib.get_close_matches(key, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"Unknown {self.kind} {name!r}.{hint} Known {self.kind}s: "
                f"{', '.join(self.names())}."
            )
        return self._entries[key]

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the entry registered under ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern.lower()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)
