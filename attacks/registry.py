"""A small generic registry: decorator registration with metadata, ``create`` by name, ``names``.

Every package of the project (attacks, defenses, datasets, models, checks) keeps one ``Registry``
so that configs and users reach objects by name, and tests can be parametrised over every entry.
An entry registers once, with whatever its callers need to know about it (a defense's kind, a
dataset's spec), in the style of timm's ``_registry.py``: there is no parallel table to keep in
sync.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
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
        self._metadata: dict[str, dict[str, Any]] = {}

    def register(
        self, name: str, **metadata: Any
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Return a decorator that registers a factory under ``name`` with its ``metadata``.

        Raises:
            ValueError: If ``name`` is already taken.

        """
        key = name.lower()

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if key in self._entries and self._entries[key] is not factory:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = factory
            self._metadata[key] = dict(metadata)
            return factory

        return decorator

    def metadata(self, name: str) -> dict[str, Any]:
        """A copy of the metadata ``name`` was registered with (empty if none).

        Raises:
            ValueError: For an unknown name; the message lists the known names.

        """
        self.get(name)
        return dict(self._metadata[name.lower()])

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
        """Build the entry registered under ``name`` with keyword arguments.

        Raises:
            ValueError: For an unknown name; the message lists the known names.
            TypeError: A keyword the entry does not take; the message lists the ones it does.

        """
        factory = self.get(name)
        accepted = accepted_keywords(factory)
        unknown = sorted(set(kwargs) - accepted) if accepted is not None else []
        if unknown:
            close = difflib.get_close_matches(unknown[0], accepted or (), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"{self.kind} {name!r} does not take {', '.join(map(repr, unknown))}{hint}; "
                f"it accepts: {', '.join(sorted(accepted or ()))}"
            )
        return factory(**kwargs)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op if it is not registered): for plugins and tests."""
        self._entries.pop(name.lower(), None)
        self._metadata.pop(name.lower(), None)

    def names(self, pattern: str = "*", **where: Any) -> list[str]:
        """Sorted registered names matching a shell-style ``pattern`` and metadata ``where``.

        ``names(kind="training")`` keeps the entries whose metadata has ``kind == "training"``;
        where a metadata value is a tuple, list or set, membership counts as a match.
        """
        return sorted(
            n
            for n in self._entries
            if fnmatch.fnmatch(n, pattern.lower()) and self._matches(n, where)
        )

    def _matches(self, key: str, where: dict[str, Any]) -> bool:
        meta = self._metadata.get(key, {})
        for field, want in where.items():
            value = meta.get(field)
            if isinstance(value, tuple | list | set | frozenset):
                if want not in value:
                    return False
            elif value != want:
                return False
        return True

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __len__(self) -> int:
        return len(self._entries)


_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted_keywords(factory: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments ``factory`` takes; None when it takes any.

    For a class, ``**kwargs`` of an ``__init__`` count as forwarded to the base class's
    ``__init__`` (the attacks' convention), so the keywords of the whole chain are collected up
    to the first ``__init__`` without ``**kwargs``.
    """
    if isinstance(factory, type):
        chain = [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__]
    else:
        chain = [factory]
    names: set[str] = set()
    for fn in chain:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # builtins without a signature
            return None
        names |= {p.name for p in params if p.kind in _NAMED and p.name != "self"}
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return names
    return None
