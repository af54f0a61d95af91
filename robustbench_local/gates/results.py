"""What a gate produced: one :class:`GateRow` per eps and the :class:`GateResult` around them.

A row's verdict compares its one-sided confidence bounds with the threshold; a result's verdict
combines its rows, its certified and corruption rows (:class:`AxisRow`), its baseline
comparisons, its health refusals and its errors (a certificate contradicted by an attack).
Per-sample outcomes are stored as ``"0101..."`` strings in baselines and reports.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robustbench_local.gates.errors import BaselineError
from robustbench_local.gates.spec import GateSpec
from robustbench_local.gates.stats import accuracy_bounds

PASS, FAIL, INCONCLUSIVE, REFUSED, NO_THRESHOLD = "pass", "fail", "inconclusive", "refused", "n/a"
FORMAT_VERSION = 2
"""Version of the baseline and report file formats (2: verdicts include the reference suite)."""


def threshold_verdict(lower: float, upper: float, threshold: float | None) -> str:
    """``pass`` if ``lower >= threshold``, ``fail`` if ``upper < threshold``, else inconclusive."""
    if threshold is None:
        return NO_THRESHOLD
    if lower >= threshold:
        return PASS
    if upper < threshold:
        return FAIL
    return INCONCLUSIVE


@dataclass
class GateRow:
    """One eps of a gate: the estimate, its bounds, the verdict and the baseline comparison."""

    eps: float
    n: int
    robust: int
    lower: float
    upper: float
    threshold: float | None
    verdict: str
    baseline_robust: int | None = None
    losses: int | None = None
    gains: int | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    regression: str | None = None  # None (no baseline), "ok", "pending" or "regressed"
    attack_robust: int | None = None
    reference_ran: bool = False

    @property
    def accuracy(self) -> float:
        """Robust accuracy ``robust / n``: the worst case of the attack and the reference."""
        return self.robust / self.n

    @property
    def attack_accuracy(self) -> float | None:
        """Robust accuracy under the gate's attack alone (its derived runs included)."""
        return None if self.attack_robust is None else self.attack_robust / self.n

    @property
    def baseline_accuracy(self) -> float | None:
        """The baseline's robust accuracy on the same samples, if compared."""
        return None if self.baseline_robust is None else self.baseline_robust / self.n

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with the accuracy and the attack's own accuracy."""
        return {
            **dataclasses.asdict(self),
            "accuracy": self.accuracy,
            "attack_accuracy": self.attack_accuracy,
        }


@dataclass
class GateResult:
    """Everything one gate evaluation produced.

    Attributes:
        gate_id: Stable key (the pytest node id), used in baselines and reports.
        spec: The gate's settings.
        rows: One :class:`GateRow` per eps.
        outcomes: ``[K][N]`` per-sample robustness under the attack and the reference (True =
            still correctly classified): what the verdict and the baseline use.
        clean_correct: ``[N]`` clean correctness.
        indices: The dataset indices evaluated (sorted).
        sample_hash: sha256 of the dataset name, split and indices.
        model_digest: sha256 of the model's weights.
        attack_config: The attack's settings and the eps grid (what a baseline must match).
        health: Health-check flags as dicts.
        attack_outcomes: ``[K][N]`` per-sample robustness under the attack alone.
        reference: What the reference did (mode, reduced, eps where it ran, what it broke).
        refusals: Why the gate refuses to pass (gradient masking, non-determinism).
        notes: Further remarks (other health warnings, baseline notes).
        wall_time: Seconds spent evaluating.
        axis_rows: The certified rows (one per eps) and corruption rows (the mean, then one
            per corruption with a threshold), judged like the rows.
        certified: What the certification did: method, settings, certifies, eps, accuracy,
            per-sample certificates (``"0101..."`` per eps); empty without ``certify``.
        corruptions: What the corruption evaluation did: suite, corruptions, severities,
            accuracy per corruption and severity, mean, clean; empty without corruptions.
        errors: Contradictions that fail the gate whatever its thresholds and options (a
            sample certified and broken by an attack in the same ball).
    """

    gate_id: str
    spec: GateSpec
    rows: list[GateRow]
    outcomes: list[list[bool]]
    clean_correct: list[bool]
    indices: list[int]
    sample_hash: str
    model_digest: str
    attack_config: dict[str, Any]
    health: list[dict[str, Any]] = field(default_factory=list)
    attack_outcomes: list[list[bool]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_time: float = 0.0
    axis_rows: list[AxisRow] = field(default_factory=list)
    certified: dict[str, Any] = field(default_factory=dict)
    corruptions: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """``fail`` > ``refused`` > ``inconclusive`` > ``pass`` over the rows and checks."""
        verdicts = {r.verdict for r in self.rows} | {r.verdict for r in self.axis_rows}
        regressed = any(r.regression == "regressed" for r in self.rows)
        if FAIL in verdicts or regressed or self.errors:
            return FAIL
        if self.refusals:
            return REFUSED
        if INCONCLUSIVE in verdicts:
            return INCONCLUSIVE
        return PASS

    def failed(self, policy: str | None = None) -> bool:
        """Whether the gate fails under ``policy`` for inconclusive verdicts (default: spec's)."""
        v = self.verdict
        return v in (FAIL, REFUSED) or (
            v == INCONCLUSIVE and (policy or self.spec.inconclusive) == "fail"
        )

    def to_dict(self, *, outcomes: bool = True) -> dict[str, Any]:
        """JSON-able result (per-sample outcomes as ``"0101..."`` strings)."""
        d: dict[str, Any] = {
            "gate_id": self.gate_id,
            "name": self.spec.name,
            "verdict": self.verdict,
            "spec": self.spec.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
            "sample_hash": self.sample_hash,
            "model_digest": self.model_digest,
            "attack_config": self.attack_config,
            "reference": self.reference,
            "health": self.health,
            "refusals": self.refusals,
            "notes": self.notes,
            "wall_time": self.wall_time,
            "axis_rows": [r.to_dict() for r in self.axis_rows],
            "certified": self.certified,
            "corruptions": self.corruptions,
            "errors": self.errors,
        }
        if outcomes:
            d["indices"] = self.indices
            d["robust"] = [bits(o) for o in self.outcomes]
            d["attack_robust"] = [bits(o) for o in self.attack_outcomes]
            d["clean_correct"] = bits(self.clean_correct)
        return d


CERTIFIED, CORRUPTION = "certified", "corruption"
"""The kinds of :class:`AxisRow`."""


@dataclass
class AxisRow:
    """A certified or corruption row of a gate: an accuracy, its bounds and the verdict.

    Attributes:
        kind: ``"certified"`` (per eps) or ``"corruption"`` (the mean, or one corruption).
        label: ``"certified (crown)"``, ``"corruptions: mean"``, ``"corruption: fog"``.
        eps: The eps of a certified row (None for corruption rows).
        n: The number of samples (the sample size of the bounds).
        accuracy: Certified accuracy, or the corruption accuracy averaged over its cells.
        lower: One-sided lower bound (the gate's confidence and method).
        upper: One-sided upper bound.
        threshold: The threshold, or None (report only).
        verdict: ``pass``, ``fail``, ``inconclusive`` or ``n/a``.
        count: Certified samples (certified rows); None for averages.
    """

    kind: str
    label: str
    eps: float | None
    n: int
    accuracy: float
    lower: float
    upper: float
    threshold: float | None
    verdict: str
    count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return dataclasses.asdict(self)


def make_rows(
    spec: GateSpec,
    outcomes: Sequence[Sequence[bool]],
    attack_outcomes: Sequence[Sequence[bool]] | None = None,
    reference_ran: Sequence[bool] | None = None,
) -> list[GateRow]:
    """Turn ``[K][N]`` outcomes into one :class:`GateRow` per eps of ``spec``.

    ``outcomes`` decide the verdict (the worst case with the reference); ``attack_outcomes``
    (the attack alone) and ``reference_ran`` (per eps) are shown beside it.
    """
    rows = []
    k_eps = len(spec.eps)
    attack = list(attack_outcomes) if attack_outcomes is not None else [None] * k_eps
    ran = list(reference_ran) if reference_ran is not None else [False] * k_eps
    for i, (eps, threshold, robust) in enumerate(
        zip(spec.eps, spec.min_accuracy, outcomes, strict=True)
    ):
        n, k = len(robust), int(sum(bool(v) for v in robust))
        lower, upper = accuracy_bounds(k, n, spec.confidence, spec.method)
        verdict = threshold_verdict(lower, upper, threshold)
        own = None if attack[i] is None else int(sum(bool(v) for v in attack[i]))
        rows.append(
            GateRow(eps, n, k, lower, upper, threshold, verdict, attack_robust=own,
                    reference_ran=bool(ran[i]))
        )  # fmt: skip
    return rows


def bits(values: Sequence[bool]) -> str:
    """Per-sample outcomes as a ``"0101..."`` string."""
    return "".join("1" if v else "0" for v in values)


def unbits(s: str) -> list[bool]:
    """The outcomes of a :func:`bits` string.

    Raises:
        BaselineError: Not a string of 0 and 1.
    """
    if not isinstance(s, str) or set(s) - {"0", "1"}:
        raise BaselineError("per-sample outcomes must be strings of 0 and 1")
    return [c == "1" for c in s]


def utc_now() -> str:
    """The current UTC time in ISO format, to the second (the ``created`` field of files)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "CERTIFIED",
    "CORRUPTION",
    "FAIL",
    "FORMAT_VERSION",
    "INCONCLUSIVE",
    "NO_THRESHOLD",
    "PASS",
    "REFUSED",
    "AxisRow",
    "GateResult",
    "GateRow",
    "bits",
    "make_rows",
    "threshold_verdict",
    "unbits",
    "utc_now",
]
