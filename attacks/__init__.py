"""Adversarial attacks for PyTorch classifiers behind one sealed interface.

Example:
    >>> import attacks
    >>> atk = attacks.create("pgd", norm="linf", steps=40, step_size=0.01)
    >>> res = atk(model, x, y, eps=[0.1, 0.2, 0.3])
    >>> attacks.names()

"""

from __future__ import annotations

from typing import Any

from attacks.adaptive import BPDA, EOT, adaptive_model, needs_adaptive
from attacks.apgd import APGD
from attacks.art import ARTAttack
from attacks.base import (
    ATTACKS,
    Attack,
    AttackContext,
    AttackResult,
    model_guard,
    parse_eps,
    register_attack,
)
from attacks.cw import CarliniWagnerL2
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.registry import Registry
from attacks.suite import AttackSuite
from attacks.threat import Norm, ThreatModel


def create(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``create("pgd", steps=40)``."""
    return ATTACKS.create(name, **kwargs)


def names(pattern: str = "*") -> list[str]:
    """Names of every registered attack (optionally filtered by a shell-style pattern)."""
    return ATTACKS.names(pattern)


__all__ = [
    "APGD",
    "ATTACKS",
    "BPDA",
    "EOT",
    "FGSM",
    "PGD",
    "ARTAttack",
    "Attack",
    "AttackContext",
    "AttackResult",
    "AttackSuite",
    "CarliniWagnerL2",
    "Norm",
    "Registry",
    "ThreatModel",
    "adaptive_model",
    "create",
    "model_guard",
    "names",
    "needs_adaptive",
    "parse_eps",
    "register_attack",
]
