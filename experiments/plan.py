"""What a run evaluates, read from the config and checked once: the evaluation plan.

:func:`EvalPlan.from_config` parses the eps grids, builds the attacks (grouped by norm), reads
each norm's reference setting and the headline (its norm, its eps and the eps's index on the
grid) and checks them against each other, before any data is loaded. The run builds one plan
and shares it between validation, evaluation and the headline number, so the attacks are built
once and the headline eps is checked once. The plan also holds the certified and corruption
settings (``eval.certify``, ``eval.corruptions``, ``eval.severities``:
:mod:`experiments.eval_settings`), checked here too, before any training.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf

import attacks as atk_lib
from experiments.eval_settings import (
    CertifySetting,
    CorruptionSetting,
    certify_setting,
    corruption_setting,
)
from experiments.instantiate import build
from experiments.resolvers import parse_number
from robustbench_local.reference import ReferenceArg, reference_from_config

logger = logging.getLogger(__name__)

AttackGroups = Mapping[str, Mapping[str, atk_lib.Attack]]


def eps_grids(cfg: DictConfig) -> dict[str, list[float]]:
    """The per-norm eps grids of ``eval.eps``, validated.

    Raises:
        ValueError: A grid that is empty, not a list, negative or not strictly increasing.
    """
    grids: dict[str, list[float]] = {}
    for norm, values in cfg.eval.eps.items():
        if isinstance(values, str | int | float):
            values = [values]
        grid = [parse_number(v) for v in values]
        if not grid:
            raise ValueError(f"eval.eps.{norm} is empty; give at least one eps")
        bad = [e for e in grid if not math.isfinite(e) or e < 0]
        if bad:
            raise ValueError(f"eval.eps.{norm} has negative or non-finite values {bad}")
        if any(b <= a for a, b in itertools.pairwise(grid)):
            raise ValueError(
                f"eval.eps.{norm}={grid} must be strictly increasing, e.g. [0.1, 0.2, 0.3]"
            )
        grids[str(norm)] = grid
    return grids


def build_attacks(cfg: DictConfig) -> dict[str, dict[str, atk_lib.Attack]]:
    """The configured attacks, grouped by norm: ``norm -> label -> Attack``.

    Raises:
        ValueError: No attack selected, or an attack whose norm has no eps grid.
    """
    groups = _attack_groups(cfg)
    _check_norms(groups, eps_grids(cfg))
    return groups


def _attack_groups(cfg: DictConfig) -> dict[str, dict[str, atk_lib.Attack]]:
    """Build every configured attack (and the deprecated ``eval.suite``), grouped by norm."""
    if not cfg.get("attack"):
        raise ValueError("no attack selected: add e.g. attack=pgd or 'attack=[fgsm,pgd]'")
    groups: dict[str, dict[str, atk_lib.Attack]] = {}
    for label, node in cfg.attack.items():
        factory = build(node, f"attack.{label}")
        attack = factory(seed=cfg.seed)
        groups.setdefault(attack.norm.value, {})[str(label)] = attack
    suite = cfg.eval.get("suite")
    if suite:
        logger.warning(
            "eval.suite is deprecated: the reference suite runs on every evaluation "
            "(eval.reference; eval=strong runs it at every eps)"
        )
        norm = str(cfg.eval.headline.norm)
        members = [atk_lib.create(name, norm=norm, seed=cfg.seed) for name in suite]
        groups.setdefault(norm, {})["suite"] = atk_lib.AttackSuite(members)
    return groups


def _check_norms(groups: AttackGroups, grids: Mapping[str, Any]) -> None:
    missing = sorted(set(groups) - set(grids))
    if missing:
        raise ValueError(
            f"attacks in norm(s) {missing} but eval.eps has grids only for {sorted(grids)}; "
            f"add e.g. eval.eps.{missing[0]}=[0.5,1.0]"
        )


def reference_of(cfg: DictConfig, norm: str) -> ReferenceArg:
    """The ``reference`` argument of a norm's curve from ``eval.reference``.

    Raises:
        ValueError: A value other than auto, all, false or a mapping of reduced settings.
    """
    value = cfg.eval.get("reference", "auto")
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    try:
        return reference_from_config(value, norm, seed=cfg.seed)
    except ValueError as err:
        raise ValueError(f"eval.reference: {err}") from err


def headline_setting(cfg: DictConfig) -> tuple[str, float]:
    """``(eval.headline.norm, eval.headline.eps)``, the eps read as a number.

    Raises:
        ValueError: The eps is not a number or a fraction such as ``8/255``.
    """
    return str(cfg.eval.headline.norm), parse_number(cfg.eval.headline.eps)


def headline_eps(cfg: DictConfig, norm: str) -> float | None:
    """``eval.headline.eps`` for the headline norm's curve, else None (its largest eps)."""
    headline_norm, eps = headline_setting(cfg)
    return eps if headline_norm == norm else None


def _headline_index(norm: str, eps: float, grids: Mapping[str, list[float]]) -> int | None:
    """Where the headline eps is on its norm's grid (None when that norm has no grid).

    Raises:
        ValueError: The headline norm has a grid and the eps is not on it.
    """
    if norm not in grids:
        return None
    for k, e in enumerate(grids[norm]):
        if math.isclose(eps, e, rel_tol=1e-6):
            return k
    raise ValueError(
        f"eval.headline.eps={eps} is not on the {norm} grid {grids[norm]}; add it to "
        f"eval.eps.{norm} or change eval.headline.eps"
    )


def _check_corruption_metric(name: Any, corruptions: CorruptionSetting | None) -> None:
    """A ``corruption_acc/...`` optimized metric needs a corruption curve.

    Raises:
        ValueError: ``optimized_metric`` is a corruption metric and ``eval.corruptions`` is off.
    """
    if corruptions is None and isinstance(name, str) and name.startswith("corruption_acc/"):
        raise ValueError(
            f"optimized_metric={name} needs a corruption curve: set eval.corruptions (auto or "
            "a list of names) or optimize another metric"
        )


@dataclass(frozen=True)
class EvalPlan:
    """What a run evaluates: built and checked once (:meth:`from_config`), then only read.

    Attributes:
        attacks: ``norm -> label -> Attack``: one curve per norm.
        grids: ``norm -> eps grid`` (strictly increasing), for every norm of ``eval.eps``.
        references: ``norm -> reference`` argument of the norm's curve (``eval.reference``).
        headline_norm: ``eval.headline.norm``.
        headline_eps: ``eval.headline.eps`` as a number.
        headline_index: The index of the headline eps on the headline norm's grid (None when
            ``eval.eps`` has no grid in that norm).
        certify: ``eval.certify`` checked (None: no certified rows): the method, its settings
            and the norms whose curves get a certified row.
        corruptions: ``eval.corruptions`` and ``eval.severities`` checked (None: no
            corruption curve).
    """

    attacks: AttackGroups
    grids: Mapping[str, tuple[float, ...]]
    references: Mapping[str, ReferenceArg]
    headline_norm: str
    headline_eps: float
    headline_index: int | None
    certify: CertifySetting | None = None
    corruptions: CorruptionSetting | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, info: Any = None) -> EvalPlan:
        """Parse and check the grids and the headline, build the attacks, read the references.

        ``info`` (the loaded data's :class:`~robustbench_local.data.DatasetInfo`, optional)
        gives the image shape the corruptions are checked against (default: the registered
        dataset's, if ``dataset.name`` is one).

        Raises:
            ValueError: A bad eps grid, a headline eps off its grid, ``eval.n_examples`` not a
                positive integer, no attack or an attack without a grid, a bad
                ``eval.reference``, ``eval.certify``, ``eval.corruptions`` or
                ``eval.severities``; the message says what to change.
        """
        grids = eps_grids(cfg)
        norm, eps = headline_setting(cfg)
        index = _headline_index(norm, eps, grids)
        n = cfg.eval.get("n_examples")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"eval.n_examples must be a positive integer or null, got {n!r}")
        groups = _attack_groups(cfg)
        _check_norms(groups, grids)
        references = {g: reference_of(cfg, g) for g in grids}
        certify = certify_setting(cfg.eval.get("certify"), groups)
        corruptions = corruption_setting(
            cfg.eval.get("corruptions"),
            cfg.eval.get("severities", [1, 2, 3, 4, 5]),
            cfg.dataset.get("name") if "dataset" in cfg else None,
            getattr(info, "shape", None),
        )
        _check_corruption_metric(cfg.get("optimized_metric"), corruptions)
        return cls(
            attacks=MappingProxyType({k: MappingProxyType(v) for k, v in groups.items()}),
            grids=MappingProxyType({k: tuple(v) for k, v in grids.items()}),
            references=MappingProxyType(references),
            headline_norm=norm,
            headline_eps=eps,
            headline_index=index,
            certify=certify,
            corruptions=corruptions,
        )

    @property
    def labels(self) -> list[str]:
        """Every attack label, norm by norm (the ``attacks`` tag)."""
        return [label for group in self.attacks.values() for label in group]

    def certify_of(self, norm: str) -> dict[str, Any] | None:
        """The ``certify`` argument of ``norm``'s curve (None: no certified row there)."""
        return None if self.certify is None else self.certify.argument(norm)

    def headline_eps_of(self, norm: str) -> float | None:
        """The headline eps for ``norm``'s curve: None off the headline norm (its largest eps)."""
        return self.headline_eps if norm == self.headline_norm else None

    def headline(self, curves: Mapping[str, Any]) -> float | None:
        """Worst-case robust accuracy at the headline eps (None without a headline curve)."""
        curve = curves.get(self.headline_norm)
        if curve is None or self.headline_index is None:
            return None
        return float(curve.worst_case()[self.headline_index])


__all__ = [
    "EvalPlan",
    "build_attacks",
    "eps_grids",
    "headline_eps",
    "headline_setting",
    "reference_of",
]
