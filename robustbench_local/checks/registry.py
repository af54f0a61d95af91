"""The one registry of health checks: each check registers once, with its kinds and run order.

A check's kinds say who runs it and what a failure means:

* ``"preflight"``: run by :func:`robustbench_local.checks.preflight` before any attack, called
  with a :class:`robustbench_local.checks.preflight.Probe`;
* ``"masking"``: run by :func:`robustbench_local.checks.masking_checks` on a finished curve,
  called with a :class:`robustbench_local.checks.masking.MaskingContext` and its options; a
  failure suggests gradient masking or a too-weak attack;
* ``"nondeterminism"``: a failure means the model's outputs are not a function of its input
  alone (the gates refuse such models unless told otherwise).

The name tuples (``PREFLIGHT_FLAGS``, ``GRADIENT_MASKING_FLAGS``, ``NONDETERMINISM_FLAGS``) are
derived from this registry by :func:`check_names`: there is no table to keep in sync.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from attacks.registry import Registry
from robustbench_local.health import Flag

CheckKind = Literal["preflight", "masking", "nondeterminism"]
KINDS: tuple[str, ...] = get_args(CheckKind)

CHECKS: Registry[Flag] = Registry("check")
"""Every health check by flag name; metadata ``kind`` (a tuple of kinds) and ``order``."""

CheckFn = Callable[..., Flag]


def register_check(name: str, *kinds: CheckKind) -> Callable[[CheckFn], CheckFn]:
    """Register a check under its flag ``name`` with its kinds; checks run in this order.

    Raises:
        ValueError: No kind, an unknown kind, or a name that is already registered.
    """
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ValueError(f"check {name!r} needs kinds from {KINDS}, got {kinds}")
    return CHECKS.register(name, kind=tuple(kinds), order=len(CHECKS))


def check_names(kind: CheckKind) -> tuple[str, ...]:
    """Names of the registered checks of one kind, in the order they run.

    Raises:
        ValueError: An unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown check kind {kind!r}; known: {', '.join(KINDS)}")
    names = CHECKS.names(kind=kind)
    return tuple(sorted(names, key=lambda n: CHECKS.metadata(n)["order"]))


__all__ = ["CHECKS", "KINDS", "CheckKind", "check_names", "register_check"]
