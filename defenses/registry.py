"""The registry of defenses: each entry registers once, with the kind its callers dispatch on.

A defense's *kind* says how a pipeline uses it:

- ``"training"``: it has ``fit(model, train, val=None, **options)``, which trains and returns the
  model (``pgd_at``, ``fgsm_at``, ``trades``, ``standard``, ``distillation``);
- ``"inference"``: it has ``wrap(model)``, which returns the protected model (the input
  preprocessors such as ``median_filter``);
- both: ``fit`` trains the defense's own part on data, then ``wrap`` puts it in front of the
  classifier (``denoising_autoencoder``).

Example:
    >>> @register_defense("my_at", kind="training")
    ... class MyAT(TrainingDefense): ...
    >>> DEFENSES.names(kind="training")
    >>> kinds("denoising_autoencoder")
    ('training', 'inference')

"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from attacks.registry import Registry

DEFENSES: Registry[Any] = Registry("defense")
KINDS = ("training", "inference")

F = TypeVar("F", bound=Callable[..., Any])


def _check_kind(name: str, kind: str | tuple[str, ...]) -> tuple[str, ...]:
    found = (kind,) if isinstance(kind, str) else tuple(kind)
    if not found or any(k not in KINDS for k in found) or len(set(found)) != len(found):
        raise ValueError(
            f"defense {name!r} declares kind={kind!r}; use 'training', 'inference' or "
            "('training', 'inference')"
        )
    return tuple(k for k in KINDS if k in found)


def register_defense(
    name: str, *, kind: str | tuple[str, ...], **metadata: Any
) -> Callable[[F], F]:
    """Return a decorator that registers a defense factory under ``name`` with its kind.

    Args:
        name: The registry name (``defenses.create(name)``, ``defense=name`` in the configs).
        kind: ``"training"``, ``"inference"`` or ``("training", "inference")``; stored as a
            tuple in the registry's metadata, so ``DEFENSES.names(kind="training")`` finds it.
        **metadata: Anything else callers need (e.g. ``preprocessor=BitDepth``).

    Raises:
        ValueError: An unknown kind, or ``name`` already taken.

    """
    kinds_ = _check_kind(name, kind)
    return DEFENSES.register(name, kind=kinds_, **metadata)  # type: ignore[return-value]


def kinds(name: str) -> tuple[str, ...]:
    """The kinds ``name`` registered with, e.g. ``("training",)``.

    Raises:
        ValueError: For an unknown name; the message lists the known ones.

    """
    return tuple(DEFENSES.metadata(name)["kind"])


__all__ = ["DEFENSES", "KINDS", "kinds", "register_defense"]
