"""The reference suite: AutoAttack's "standard" cascade, run on every evaluation.

:func:`standard_suite` builds a :class:`ReferenceSuite`: APGD-CE, APGD-T (``apgd_dlr``), FAB-T
and Square, each on the samples the previous ones left standing, with AutoAttack's iteration
and query budgets (100 iterations, 5000 queries). For a model whose forward pass is random
(declared ``random=True``, or found by two forward passes that differ) it switches by itself to
AutoAttack's "rand" protocol: APGD-CE and APGD-DLR with EOT over 20 draws.

It spends the work where samples are still undecided (the point of A3, Liu et al. 2022), and
differs from AutoAttack's "standard" version in three ways, none of which lost strength on
the eight trap and honest MNIST models of ``benchmarks/reference.py`` (500 images, linf 0.3:
at or below AutoAttack's robust accuracy on every one, at 0.31x its summed wall time):

- APGD-T and FAB-T try 4 target classes per sample instead of 9, ranked by the distance to the
  linearised boundary at the clean point (MALT, Melamed et al. 2023) rather than by logit: the
  targets that break samples are nearly always among the first two of that order;
- FAB-T runs as a fixed-budget member: a sample with an example within ``eps`` stops;
- a sample whose gradient is zero where it stands stops (APGD, FAB): it could not move again,
  so the rest of its iterations would repeat the same point; Square, which needs no gradient,
  still attacks it with its full budget.

:func:`robustness_curve <robustbench_local.evaluate.robustness_curve>` runs this suite on the
samples its chosen attacks left standing (:func:`resolve_reference` decides which suite, where
and whether it is shared with the chosen attacks; :func:`reference_rows` runs it on one batch).
A sample the reference breaks at eps ``e`` counts as broken at every eps ``>= e``.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack, "standard" and "rand" versions).
    Andriushchenko et al., "Square Attack: a query-efficient black-box adversarial attack via
    random search", ECCV 2020.
    Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
    attack", ICML 2020 (FAB).
    Liu et al., "Practical Evaluation of Adversarial Robustness via Adaptive Auto Attack",
    CVPR 2022 (A3: attack work where samples are undecided).
    Melamed, Yehudai & Shamir, "MALT Powers Up Adversarial Attacks", NeurIPS 2023 (targets by
    linearised distance).
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018
    (EOT).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

import attacks as atk_lib
from attacks.apgd import APGD
from attacks.base import AttackContext
from attacks.fab import FAB
from attacks.losses import dlr
from attacks.restarts import run_restarts
from attacks.result import Cost
from attacks.validation import check_positive_int
from robustbench_local.card import THREAT_MODELS, check_threat_model
from robustbench_local.utils import plain

logger = logging.getLogger(__name__)

SUITE_VERSION = "3"
"""Bump when the standard suite changes; cards and baselines of other versions are refused."""
REFERENCE_LABEL = "reference"
"""The curve row of the worst case with the reference suite."""
REFERENCE_MODES = ("auto", "all")
STANDARD_STEPS = 100
STANDARD_TARGETS = 4
TARGET_ORDER = "linear"
SQUARE_QUERIES = 5000
EOT_SAMPLES = 20
DEFAULT_BUDGETS: dict[str, int] = {
    "steps": STANDARD_STEPS,
    "n_target_classes": STANDARD_TARGETS,
    "square_queries": SQUARE_QUERIES,
    "eot_samples": EOT_SAMPLES,
}
"""The suite's settings (AutoAttack's, but 4 ranked targets); any other value makes a reference
that is not the standard one, labelled *reduced* (even a larger one, e.g. 9 targets)."""

_FAB_T = (
    "fab_t",
    lambda b: {
        "steps": b["steps"],
        "n_target_classes": b["n_target_classes"],
        "target_order": TARGET_ORDER,
    },
)
_SQUARE = ("square", lambda b: {"n_queries": b["square_queries"]})


class APGDDLRUntargeted(APGD):
    """APGD on the untargeted DLR loss, the second attack of AutoAttack's "rand" version.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        **kwargs: ``steps``, ``restarts``, ``rho`` and the :class:`~attacks.Attack` arguments.

    References:
        Croce & Hein, ICML 2020 (APGD-DLR).
    """

    name = "apgd_dlr_untargeted"

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """``restarts`` APGD runs on the DLR loss of the true class."""

        def loss(logits: Tensor, rows: Tensor) -> Tensor:
            return dlr(logits, y[rows])

        return run_restarts(x, self.restarts, self._runner(ctx, x, y, eps, loss, ("dlr",))).x


class ReferenceSuite(atk_lib.AttackSuite):
    """AutoAttack's cascade; on a random model, its "rand" protocol (EOT over ``eot_samples``).

    Build it with :func:`standard_suite`. Each member attacks the samples the previous ones
    left standing; ``res.details["broken_by"]`` says how many each broke per eps and
    ``res.details["protocol"]`` which protocol ran ("standard" or "rand").

    Args:
        members: The standard cascade.
        rand_members: The cascade for random models (run on the EOT average of the model).
        budgets: The settings it was built with (see :data:`DEFAULT_BUDGETS`).
        missing: Registry names of members not available in this installation.
        seed: The suite's seed.

    References:
        Croce & Hein, ICML 2020.
    """

    name = "standard_suite"

    def __init__(
        self,
        members: Sequence[atk_lib.Attack],
        rand_members: Sequence[atk_lib.Attack],
        *,
        budgets: Mapping[str, int],
        missing: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(members, seed=seed)
        self._rand = list(rand_members)
        self.budgets = dict(budgets)
        self.missing = list(missing)

    @property
    def eot_samples(self) -> int:
        """Draws the EOT average of the "rand" protocol takes."""
        return int(self.budgets["eot_samples"])

    @property
    def reduced(self) -> bool:
        """True when any setting differs from AutoAttack's (:data:`DEFAULT_BUDGETS`)."""
        return self.budgets != DEFAULT_BUDGETS

    def config(self) -> dict[str, Any]:
        """Version, settings, both cascades and the members missing from this installation."""
        return {
            "name": self.name,
            "version": SUITE_VERSION,
            "budgets": dict(self.budgets),
            "attacks": [a.config() for a in self.members],
            "rand_attacks": [a.config() for a in self._rand],
            "missing": list(self.missing),
        }

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """The standard cascade, or the "rand" one on the EOT average for a random model.

        Members whose loss needs more classes than the model has (the DLR losses need 3 or 4)
        are left out, as AutoAttack does.
        """
        first = ctx.logits(x)
        if is_random(ctx, x, first):
            eot = atk_lib.EOT(ctx.model, samples=self.eot_samples)
            protocol, members, model, scale = "rand", self._rand, eot, self.eot_samples
        else:
            protocol, members, model, scale = "standard", self.members, ctx.model, 1
        ctx.details.setdefault("protocol", {})[eps] = protocol
        usable = [
            a.with_eps(eps) if isinstance(a, FAB) else a  # FAB-T as a fixed-budget member
            for a in members
            if first.shape[1] >= _MIN_CLASSES.get(a.name, 2)
        ]
        return _cascade(ctx, model, usable, x, y, eps, scale)


_MIN_CLASSES = {"apgd_dlr": 4, "apgd_dlr_untargeted": 3}
"""Classes the DLR losses need (Croce & Hein 2020); other members need two."""


def is_random(ctx: AttackContext, x: Tensor, first: Tensor | None = None) -> bool:
    """The model declares ``random=True``, or two forward passes on ``x`` differ.

    ``first`` is a forward pass already made on ``x`` (saves one).
    """
    if getattr(ctx.model, "random", False):
        return True
    first = ctx.logits(x) if first is None else first
    return not torch.allclose(first, ctx.logits(x), rtol=1e-4, atol=1e-5)


def _cascade(
    ctx: AttackContext,
    model: nn.Module,
    members: Sequence[atk_lib.Attack],
    x: Tensor,
    y: Tensor,
    eps: float,
    scale: int,
) -> Tensor:
    """Run ``members`` in turn on the survivors; passes are counted ``scale`` times (EOT)."""
    cand = x.clone()
    alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    broken_by: dict[str, int] = {}
    for atk in members:
        idx = alive.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        res = atk(model, x[idx], y[idx], eps=eps, ids=ctx.ids[idx])
        ctx.n_forward += scale * res.n_forward
        ctx.n_backward += scale * res.n_backward
        cand[idx] = res.x_adv
        alive[idx] = ~res.success
        broken_by[atk.name] = broken_by.get(atk.name, 0) + int(res.success.sum())
    ctx.details.setdefault("broken_by", {})[eps] = broken_by
    return cand


def standard_suite(
    threat_model: str = "linf",
    *,
    steps: int = STANDARD_STEPS,
    n_target_classes: int = STANDARD_TARGETS,
    square_queries: int = SQUARE_QUERIES,
    eot_samples: int = EOT_SAMPLES,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> ReferenceSuite:
    """AutoAttack's cascade: APGD-CE, APGD-T, FAB-T, Square; "rand" on random models.

    See the module docstring for how it differs from AutoAttack's "standard" version.

    Args:
        threat_model: ``"linf"`` or ``"l2"``.
        steps: Iterations of APGD and FAB (AutoAttack: 100).
        n_target_classes: Target classes of APGD-T and FAB-T, ranked by linearised distance
            (default 4; AutoAttack: 9, ranked by logit).
        square_queries: Queries of Square (AutoAttack: 5000).
        eot_samples: Draws averaged by EOT in the "rand" protocol (AutoAttack: 20).
        seed: Seed of every member.
        bounds: Valid input range.

    Returns:
        A :class:`ReferenceSuite`; ``suite.reduced`` is True unless every budget is the default.

    Raises:
        ValueError: Unknown threat model or a budget that is not a positive integer.

    Example:
        >>> suite = rbl.standard_suite("linf")
        >>> res = suite(model, x, y, eps=0.3)   # res.details["broken_by"][0.3]
        >>> quick = rbl.standard_suite(n_target_classes=3, square_queries=500)  # reduced

    References:
        Croce & Hein, ICML 2020.
    """
    norm = check_threat_model(threat_model)
    budgets = {
        "steps": check_positive_int("steps", steps),
        "n_target_classes": check_positive_int("n_target_classes", n_target_classes),
        "square_queries": check_positive_int("square_queries", square_queries),
        "eot_samples": check_positive_int("eot_samples", eot_samples),
    }
    common = {"norm": norm, "seed": seed, "bounds": bounds}
    members = [
        atk_lib.create("apgd_ce", steps=steps, **common),
        atk_lib.create(
            "apgd_dlr",
            steps=steps,
            n_target_classes=n_target_classes,
            target_order=TARGET_ORDER,
            **common,
        ),
    ]
    missing = []
    for name, kwargs in (_FAB_T, _SQUARE):
        if name in atk_lib.ATTACKS:
            members.append(atk_lib.create(name, **kwargs(budgets), **common))
        else:
            missing.append(name)
    if missing:
        logger.debug("standard suite without %s (not registered yet)", ", ".join(missing))
    rand = [
        atk_lib.create("apgd_ce", steps=steps, **common),
        APGDDLRUntargeted(steps=steps, **common),
    ]
    return ReferenceSuite(members, rand, budgets=budgets, missing=missing, seed=seed)


# --------------------------------------------------------------------------------------------
# Where the reference runs in a curve
# --------------------------------------------------------------------------------------------

ReferenceArg = bool | str | atk_lib.Attack
"""What ``robustness_curve(reference=...)`` takes: ``"auto"``, ``"all"``, ``False`` or an Attack."""


@dataclass(frozen=True)
class ReferenceRecord:
    """The reference of a curve: its settings, where it runs, and what it found.

    The one record of the reference suite in an evaluation: :func:`resolve_reference` decides
    it before the first batch, the curve's plan runs :attr:`suite` on each batch
    (:func:`reference_rows`), and the finished curve holds it with the summed
    :attr:`broken_by` (:attr:`robustbench_local.curve.Curve.reference`).

    Attributes:
        label: The curve row holding the worst case with the reference (``"reference"``, or
            the chosen attack's label when the chosen attacks include the same suite; None
            when off).
        mode: ``"auto"`` (headline eps), ``"all"`` (every eps), ``"explicit"`` (a user-chosen
            reference at the headline eps) or ``"off"`` (opted out: no row).
        reduced: A user-chosen reference that is not the suite at its full budgets.
        ran: ``[K]``: the eps where it runs.
        shared: The chosen attacks include the same suite (same configuration), so it does not
            run twice.
        model: What it attacks (``"as given"``, ``"BPDA ..."``, ``"straight-through"``).
        config: Its configuration.
        broken_by: ``eps -> member -> samples`` it broke (summed over batches).
        suite: The attack that runs (None when off or shared; not saved with the curve).
    """

    label: str | None
    mode: str
    reduced: bool = False
    ran: list[bool] = field(default_factory=list)
    shared: bool = False
    model: str = "as given"
    config: dict[str, Any] = field(default_factory=dict)
    broken_by: dict[str, dict[str, int]] = field(default_factory=dict)
    suite: atk_lib.Attack | None = field(default=None, repr=False, compare=False)

    @property
    def runs(self) -> bool:
        """True when the reference attacks in this curve (not off, not shared)."""
        return self.suite is not None and self.label is not None

    @property
    def display(self) -> str:
        """How the row is named in tables: ``reference`` or ``reference (reduced)``."""
        name = self.label or "reference"
        return f"{name} (reduced)" if self.reduced else name

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the suite itself is described by :attr:`config`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "suite"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReferenceRecord:
        """Rebuild a record from :meth:`to_dict` output."""
        return cls(
            label=d.get("label"),
            mode=str(d["mode"]),
            reduced=bool(d.get("reduced", False)),
            ran=[bool(v) for v in d.get("ran", [])],
            shared=bool(d.get("shared", False)),
            model=str(d.get("model", "as given")),
            config=dict(d.get("config") or {}),
            broken_by={str(k): dict(v) for k, v in (d.get("broken_by") or {}).items()},
        )


def headline_index(grid: Sequence[float], headline_eps: float | None) -> int:
    """Index of ``headline_eps`` in ``grid`` (default: the largest eps).

    Raises:
        ValueError: ``headline_eps`` is not on the grid.
    """
    if headline_eps is None:
        return len(grid) - 1
    for k, e in enumerate(grid):
        if math.isclose(float(headline_eps), e, rel_tol=1e-6, abs_tol=1e-12):
            return k
    raise ValueError(
        f"headline_eps={headline_eps} is not on the eps grid {list(grid)}; add it to the grid "
        "or pass one of its values"
    )


def resolve_reference(
    reference: ReferenceArg,
    attack_map: Mapping[str, atk_lib.Attack],
    grid: Sequence[float],
    headline_eps: float | None = None,
    seed: int = 0,
) -> ReferenceRecord:
    """Decide the reference of a curve from ``robustness_curve``'s ``reference`` argument.

    Raises:
        ValueError: An unknown ``reference`` value, a headline eps off the grid, or a reference
            attack on another norm or bounds than the chosen attacks.
    """
    k = headline_index(grid, headline_eps)
    if reference is False:
        return ReferenceRecord(None, "off")
    first = next(iter(attack_map.values()))
    if isinstance(reference, atk_lib.Attack):
        suite, mode = reference, "explicit"
        if suite.norm != first.norm or suite.bounds != first.bounds:
            raise ValueError(
                f"the reference attack works in {suite.norm.value} with bounds {suite.bounds}, "
                f"the chosen attacks in {first.norm.value} with bounds {first.bounds}: build it "
                "with the same threat model, e.g. standard_suite(threat_model, ...)"
            )
    elif reference is True or reference in REFERENCE_MODES:
        mode = "auto" if reference is True else str(reference)
        if first.norm.value not in THREAT_MODELS:
            logger.warning(NO_SUITE, first.norm.value)
            return ReferenceRecord(None, "off")
        suite = standard_suite(first.norm.value, seed=seed, bounds=first.bounds)
    else:
        raise ValueError(
            f"reference must be 'auto', 'all', False or an Attack (e.g. a reduced "
            f"standard_suite(...)), got {reference!r}"
        )
    reduced = not (isinstance(suite, ReferenceSuite) and not suite.reduced)
    ran = [True] * len(grid) if mode == "all" else [i == k for i in range(len(grid))]
    config = plain(suite.config())
    shared = next((lbl for lbl, a in attack_map.items() if plain(a.config()) == config), None)
    if shared is not None:
        logger.info("the chosen attack %r is the reference suite: it does not run twice", shared)
        return ReferenceRecord(shared, mode, reduced, [True] * len(grid), True, config=config)
    return ReferenceRecord(REFERENCE_LABEL, mode, reduced, ran, config=config, suite=suite)


_SETTING_KEYS = tuple(DEFAULT_BUDGETS)
NO_SUITE = (
    "there is no standard reference suite for %s (AutoAttack's needs l1-APGD); the curve runs "
    "without one: pass reference=<an Attack> (e.g. attacks.create('alma', norm='l1')) to check "
    "the chosen attacks against it"
)


def reference_from_config(
    value: Any, threat_model: str, seed: int = 0, bounds: tuple[float, float] = (0.0, 1.0)
) -> ReferenceArg:
    """A ``reference`` argument from a config value (gate files, ``eval.reference``).

    ``"auto"``, ``"all"``, ``True`` (auto) and ``False``/``"false"``/``"off"`` pass through; a
    mapping of budgets (e.g. ``{n_target_classes: 3, square_queries: 500}``) builds a reduced
    :func:`standard_suite` on ``threat_model``.

    Raises:
        ValueError: Any other value, or unknown keys in the mapping (the known ones are listed).
    """
    if value is None or value is False or value in ("false", "off", "none"):
        return False
    if value is True or value in REFERENCE_MODES:
        return "auto" if value is True else str(value)
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - set(_SETTING_KEYS))
        if unknown:
            raise ValueError(
                f"unknown reference settings {unknown}; known: {', '.join(_SETTING_KEYS)}"
            )
        settings = {str(k): int(v) for k, v in value.items()}
        return standard_suite(threat_model, seed=seed, bounds=bounds, **settings)
    raise ValueError(
        "reference must be auto, all, false or a mapping of reduced settings such as "
        f"{{n_target_classes: 3, square_queries: 500}}; got {value!r}"
    )


# --------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceRows:
    """The reference's result on one batch.

    Attributes:
        robust: ``bool [K, n]``: robust under the chosen attacks and the reference (nested: a
            sample the reference breaks at eps ``e`` is broken at every larger eps).
        cost: What it cost on the batch.
        broken_by: ``eps -> member -> samples`` the member broke (as strings, JSON keys).
    """

    robust: Tensor
    cost: Cost
    broken_by: dict[str, dict[str, int]]


def reference_rows(
    suite: atk_lib.Attack,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    grid: Sequence[float],
    ran: Sequence[bool],
    alive: Tensor,
) -> ReferenceRows:
    """Run ``suite`` on the samples ``alive`` (``bool [K, n]``) at each eps where ``ran``.

    At each such eps in increasing order it attacks the samples still alive there and not yet
    broken by the reference at a smaller eps, with their dataset indices as ``ids``.
    """
    alive = alive.to(x.device)
    broken = torch.zeros_like(alive)
    cost = Cost()
    broken_by: dict[str, dict[str, int]] = {}
    for k in (i for i, r in enumerate(ran) if r):
        idx = (alive[k] & ~broken[k]).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        res = suite(model, x[idx], y[idx], eps=float(grid[k]), ids=ids[idx])
        hit = torch.zeros_like(alive[k])
        hit[idx] = res.success
        broken[k:] |= hit
        cost = cost + Cost.of(res)
        members = next(iter(res.details.get("broken_by", {}).values()), {})  # one eps per call
        broken_by[f"{float(grid[k]):g}"] = {m: int(v) for m, v in members.items()}
    return ReferenceRows(alive & ~broken, cost, broken_by)


__all__ = [
    "DEFAULT_BUDGETS",
    "EOT_SAMPLES",
    "REFERENCE_LABEL",
    "REFERENCE_MODES",
    "SQUARE_QUERIES",
    "STANDARD_STEPS",
    "STANDARD_TARGETS",
    "SUITE_VERSION",
    "APGDDLRUntargeted",
    "ReferenceArg",
    "ReferenceRecord",
    "ReferenceRows",
    "ReferenceSuite",
    "headline_index",
    "is_random",
    "reference_from_config",
    "reference_rows",
    "resolve_reference",
    "standard_suite",
]
