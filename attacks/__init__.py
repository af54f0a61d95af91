"""Adversarial attacks for PyTorch classifiers behind one sealed interface.

Example:
    >>> import attacks
    >>> atk = attacks.create("pgd", norm="linf", steps=40, step_size=0.01)
    >>> res = atk(model, x, y, eps=[0.1, 0.2, 0.3])
    >>> attacks.names()
    >>> x_adv = atk.perturb(model, x, y, eps=0.3)   # adversarial training's inner maximisation

"""

from __future__ import annotations

from typing import Any

from attacks.adaptive import BPDA, EOT, adaptive_model, needs_adaptive
from attacks.alma import ALMA
from attacks.apgd import APGD
from attacks.art import ARTAttack, ARTMinimumNormAttack
from attacks.base import (
    ATTACKS,
    Attack,
    FixedBudgetAttack,
    MinimumNormAttack,
    register_attack,
)
from attacks.context import AttackContext, model_guard
from attacks.cw import CarliniWagnerL2
from attacks.ddn import DDN
from attacks.fab import FAB, FABT
from attacks.fgsm import FGSM
from attacks.fmn import FMN
from attacks.pgd import PGD
from attacks.registry import Registry
from attacks.result import AttackResult
from attacks.square import Square
from attacks.straight_through import StraightThrough, find_rounding_ops, straight_through_model
from attacks.suite import AttackSuite
from attacks.threat import Norm, ThreatModel
from attacks.trades import TRADESKL
from attacks.validation import parse_eps


def create(name: str, **kwargs: Any) -> Attack:
    """Build a registered attack by name, e.g. ``create("pgd", steps=40)``."""
    return ATTACKS.create(name, **kwargs)


def names(pattern: str = "*") -> list[str]:
    """Names of every registered attack (optionally filtered by a shell-style pattern)."""
    return ATTACKS.names(pattern)


__all__ = [
    "ALMA",
    "APGD",
    "ATTACKS",
    "BPDA",
    "DDN",
    "EOT",
    "FAB",
    "FABT",
    "FGSM",
    "FMN",
    "PGD",
    "TRADESKL",
    "ARTAttack",
    "ARTMinimumNormAttack",
    "Attack",
    "AttackContext",
    "AttackResult",
    "AttackSuite",
    "CarliniWagnerL2",
    "FixedBudgetAttack",
    "MinimumNormAttack",
    "Norm",
    "Registry",
    "Square",
    "StraightThrough",
    "ThreatModel",
    "adaptive_model",
    "create",
    "find_rounding_ops",
    "model_guard",
    "names",
    "needs_adaptive",
    "parse_eps",
    "register_attack",
    "straight_through_model",
]
