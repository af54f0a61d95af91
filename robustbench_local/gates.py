"""Robustness gates: pass/fail verdicts on robust accuracy that do not flake.

A gate evaluates one attack over an eps grid on a fixed, hashed list of test samples and turns
the count of samples that stay correctly classified into a verdict with one-sided binomial
confidence bounds:

* **pass** when the lower bound clears the threshold,
* **fail** when the upper bound is below it,
* **inconclusive** otherwise (the policy decides whether that fails, warns or passes).

Against a stored baseline (same attack config, same samples) a gate runs an exact McNemar test on
the per-sample outcomes and fails only on a drop significantly larger than ``margin``, with Holm's
correction across every comparison of the session. A gate whose health checks flag gradient
masking or non-determinism refuses to pass unless it opts in.

This module holds the statistics, the gate spec, the deterministic runner, baseline I/O and the
reports; ``robustbench_local.pytest_plugin`` wires it into pytest.

Example:
    >>> spec = GateSpec.from_kwargs("digits_pgd", {"attack": "pgd", "eps": [0.05, 0.1],
    ...                                            "min_accuracy": [0.8, 0.3], "dataset": "digits"})
    >>> result = run_gate(spec, model)
    >>> print(render_table([result]))

References:
    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
    Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 1934.
    McNemar, "Note on the sampling error of the difference between correlated proportions or
    percentages", Psychometrika 1947.
    Liu, Hsueh, Hsieh & Chen, "Tests for equivalence or non-inferiority for paired binary data",
    Statistics in Medicine 2002 (the margin-shifted conditional test).
    Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statistics 1979.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import difflib
import hashlib
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defenses.data import tensors_of
from defenses.storage import atomic_write_json
from robustbench_local.records import metric_key, versions

if TYPE_CHECKING:
    from torch import Tensor, nn

logger = logging.getLogger(__name__)

PASS, FAIL, INCONCLUSIVE, REFUSED, NO_THRESHOLD = "pass", "fail", "inconclusive", "refused", "n/a"
POLICIES = ("fail", "warn", "pass")
METHODS = ("wilson", "clopper-pearson")
SPLITS = ("test", "train")
NORMS = ("linf", "l2")
BASELINE_FORMAT = "robustbench_local.gates/baseline"
REPORT_FORMAT = "robustbench_local.gates/report"
FORMAT_VERSION = 1
# Attack arguments a gate sets itself: the gate fixes seeds and eval mode so verdicts repeat.
RESERVED_ATTACK_KWARGS = {"eps": "eps", "seed": "seed", "norm": "norm", "eval_mode": None}


class GateConfigError(ValueError):
    """A gate's settings are invalid (the message names the setting and the fix)."""


class BaselineError(ValueError):
    """A baseline file cannot be used for a gate (other attack config, other samples, bad file)."""


class RobustnessGateWarning(UserWarning):
    """An inconclusive gate under the ``warn`` policy."""


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _check_counts(k: int, n: int) -> None:
    for name, v in (("k", k), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer count, got {v!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise GateConfigError(f"confidence must be a number such as 0.95, got {confidence!r}")
    c = float(confidence)
    if not 0.5 <= c < 1.0:
        raise GateConfigError(
            f"confidence must be in [0.5, 1) (a probability, e.g. 0.95 for 95%), got {confidence}"
        )
    return c


def wilson_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided Wilson score bounds for a binomial proportion.

    Each bound holds on its own at level ``confidence``: ``P(p < lower) <= 1 - confidence``
    (approximately) and likewise for ``upper``.

    Args:
        k: Successes (robust samples).
        n: Trials (evaluated samples).
        confidence: One-sided confidence level, e.g. 0.95.

    Returns:
        ``(lower, upper)`` in [0, 1].

    References:
        Wilson, "Probable inference, the law of succession, and statistical inference", 1927.
    """
    from scipy.stats import norm

    _check_counts(k, n)
    z = float(norm.ppf(_check_confidence(confidence)))
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def clopper_pearson_bounds(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """One-sided exact (Clopper-Pearson) bounds for a binomial proportion.

    Args:
        k: Successes (robust samples).
        n: Trials (evaluated samples).
        confidence: One-sided confidence level, e.g. 0.95.

    Returns:
        ``(lower, upper)``; each bound is exact-conservative at level ``confidence``.

    References:
        Clopper & Pearson, "The use of confidence or fiducial limits illustrated in the case of
        the binomial", Biometrika 1934.
    """
    from scipy.stats import beta

    _check_counts(k, n)
    alpha = 1.0 - _check_confidence(confidence)
    lower = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))
    return lower, upper


def accuracy_bounds(
    k: int, n: int, confidence: float = 0.95, method: str = "wilson"
) -> tuple[float, float]:
    """One-sided bounds with ``method`` ``"wilson"`` or ``"clopper-pearson"``."""
    method = _check_method(method)
    if method == "wilson":
        return wilson_bounds(k, n, confidence)
    return clopper_pearson_bounds(k, n, confidence)


def threshold_verdict(lower: float, upper: float, threshold: float | None) -> str:
    """``pass`` if ``lower >= threshold``, ``fail`` if ``upper < threshold``, else inconclusive."""
    if threshold is None:
        return NO_THRESHOLD
    if lower >= threshold:
        return PASS
    if upper < threshold:
        return FAIL
    return INCONCLUSIVE


def mcnemar_drop_pvalue(losses: int, gains: int, n: int, margin: float = 0.0) -> float:
    """One-sided exact McNemar p-value for "accuracy dropped by more than ``margin``".

    On paired outcomes (same samples, baseline vs. now) only the discordant pairs carry
    information: ``losses`` (robust before, broken now) and ``gains`` (the reverse). With
    ``margin = 0`` this is the exact McNemar test, ``P(Binom(m, 1/2) >= losses)`` with
    ``m = losses + gains``. With a margin ``d > 0`` the null hypothesis is "the drop is at most
    ``d``"; conditional on ``m`` its boundary puts the loss probability of a discordant pair at
    ``1/2 + d n / (2 m)`` (the discordance rate estimated by ``m / n``), which gives
    ``P(Binom(m, 1/2 + d n / (2 m)) >= losses)``; when ``m <= d n`` no outcome can show such a
    drop and the p-value is 1.

    Args:
        losses: Samples robust in the baseline and not now.
        gains: Samples not robust in the baseline and robust now.
        n: Paired samples in total.
        margin: The tolerated drop in accuracy (a fraction, ``0 <= margin < 1``).

    Returns:
        The p-value in [0, 1].

    References:
        McNemar, Psychometrika 1947; Liu et al., Statistics in Medicine 2002.
    """
    from scipy.stats import binom

    _check_counts(losses + gains, n)
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    m = losses + gains
    if m == 0 or losses == 0:
        return 1.0
    theta = 0.5 + margin * n / (2.0 * m)
    if theta >= 1.0:
        return 1.0
    return float(min(1.0, binom.sf(losses - 1, m, theta)))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (reject ``H_i`` at level alpha iff ``adj_i <= alpha``).

    References:
        Holm, "A simple sequentially rejective multiple test procedure", 1979.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# --------------------------------------------------------------------------------------------
# Gate specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateSpec:
    """What a gate checks and how strictly.

    Attributes:
        name: Display name (the test or YAML gate name).
        attack: A registered attack name (``attacks.names()``), e.g. ``"pgd"``.
        eps: Budgets, sorted increasingly (input units: 0.3 on MNIST).
        min_accuracy: Threshold per eps in [0, 1], or None for "report and compare only".
        n_examples: Samples drawn (a fixed, hashed list) from the split.
        dataset: A ``robustbench_local.load_dataset`` name.
        split: ``"test"`` (default) or ``"train"``.
        norm: ``"linf"`` or ``"l2"``; None keeps the attack's default.
        attack_kwargs: Further attack arguments, e.g. ``{"steps": 20}``.
        confidence: One-sided confidence of the bounds and the baseline tests (default 0.95).
        method: ``"wilson"`` (default) or ``"clopper-pearson"``.
        margin: Tolerated drop against a baseline before a significant change fails.
        inconclusive: What an inconclusive verdict does: ``"fail"`` (default), ``"warn"``,
            ``"pass"``.
        allow_masking: Let the gate pass although gradient masking is flagged.
        allow_nondeterminism: Let the gate pass although non-determinism is flagged.
        seed: Seed of the sample list, the attack and torch.
    """

    name: str
    attack: str = "pgd"
    eps: tuple[float, ...] = (0.3,)
    min_accuracy: tuple[float | None, ...] = (None,)
    n_examples: int = 500
    dataset: str = "mnist"
    split: str = "test"
    norm: str | None = None
    attack_kwargs: Mapping[str, Any] = field(default_factory=dict)
    confidence: float = 0.95
    method: str = "wilson"
    margin: float = 0.0
    inconclusive: str = "fail"
    allow_masking: bool = False
    allow_nondeterminism: bool = False
    seed: int = 0

    @classmethod
    def fields(cls) -> list[str]:
        """The settings a marker or a YAML gate may give (everything but ``name``)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "name"]

    @classmethod
    def from_kwargs(cls, name: str, kwargs: Mapping[str, Any]) -> GateSpec:
        """Validate user settings (marker kwargs or a YAML mapping) into a spec.

        Raises:
            GateConfigError: Unknown settings, or a setting with a bad type or value.
        """
        _reject_unknown(kwargs, cls.fields())
        kw = dict(kwargs)
        if "eps" not in kw:
            raise GateConfigError("eps is required: e.g. eps=0.3 or eps=[0.1, 0.3]")
        eps = _check_eps(kw.pop("eps"))
        thresholds = _check_thresholds(kw.pop("min_accuracy", None), len(eps))
        pairs = sorted(zip(eps, thresholds, strict=True), key=lambda p: p[0])
        values: dict[str, Any] = {
            "eps": tuple(e for e, _ in pairs),
            "min_accuracy": tuple(t for _, t in pairs),
        }
        for key, value in kw.items():
            values[key] = _VALIDATORS[key](value, key)
        return cls(name=str(name), **values)

    def with_overrides(self, **overrides: Any) -> GateSpec:
        """A copy with some settings replaced (None values are ignored), validated again."""
        kw = {k: v for k, v in self.to_dict().items() if k != "name"}
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return GateSpec.from_kwargs(self.name, kw)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings."""
        d = dataclasses.asdict(self)
        d["eps"], d["min_accuracy"] = list(self.eps), list(self.min_accuracy)
        d["attack_kwargs"] = dict(self.attack_kwargs)
        return d


def _reject_unknown(kwargs: Mapping[str, Any], known: list[str]) -> None:
    if not isinstance(kwargs, Mapping):
        raise GateConfigError(f"gate settings must be a mapping, got {type(kwargs).__name__}")
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise GateConfigError(
                f"unknown robustness gate argument {key!r}.{hint} Known arguments: "
                f"{', '.join(known)}. Attack arguments go in attack_kwargs={{...}}."
            )


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GateConfigError(f"{key} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if math.isnan(v) or math.isinf(v):
        raise GateConfigError(f"{key} must be finite, got {value!r}")
    return v


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return [value]


def _check_eps(value: Any) -> list[float]:
    eps = [_number(v, "eps") for v in _as_list(value)]
    if not eps:
        raise GateConfigError("eps is empty: give a budget such as eps=0.3 or a list")
    if any(e < 0 for e in eps):
        raise GateConfigError(f"eps must be >= 0, got {eps}")
    if len(set(eps)) != len(eps):
        raise GateConfigError(f"eps has duplicates: {eps}")
    return eps


def _check_thresholds(value: Any, k: int) -> list[float | None]:
    if value is None:
        return [None] * k
    values = _as_list(value)
    if len(values) == 1:
        values = values * k
    if len(values) != k:
        raise GateConfigError(
            f"min_accuracy has {len(values)} values for {k} eps values: "
            "give one threshold or one per eps"
        )
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        t = _number(v, "min_accuracy")
        if not 0.0 <= t <= 1.0:
            raise GateConfigError(
                f"min_accuracy must be in [0, 1] (a fraction of samples, e.g. 0.85 for 85%), "
                f"got {v}"
            )
        out.append(t)
    return out


def _check_str(choices: Sequence[str] | None) -> Any:
    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise GateConfigError(f"{key} must be a non-empty string, got {value!r}")
        v = value.lower()
        if choices is not None and v not in choices:
            raise GateConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return v

    return check


def _check_method(value: Any, key: str = "method") -> str:
    v = _check_str(None)(value, key).replace("_", "-")
    v = {"cp": "clopper-pearson", "exact": "clopper-pearson"}.get(v, v)
    if v not in METHODS:
        raise GateConfigError(f"{key} must be one of {', '.join(METHODS)}; got {value!r}")
    return v


def _check_norm(value: Any, key: str) -> str | None:
    return None if value is None else _check_str(NORMS)(value, key)


def _check_int(minimum: int) -> Any:
    def check(value: Any, key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise GateConfigError(f"{key} must be an integer, got {value!r}")
        if value < minimum:
            raise GateConfigError(f"{key} must be >= {minimum}, got {value}")
        return int(value)

    return check


def _check_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise GateConfigError(f"{key} must be True or False, got {value!r}")
    return value


def _check_confidence_field(value: Any, key: str) -> float:
    return _check_confidence(value)


def _check_margin(value: Any, key: str) -> float:
    v = _number(value, key)
    if not 0.0 <= v < 1.0:
        raise GateConfigError(f"{key} must be in [0, 1) (an accuracy drop, e.g. 0.02), got {value}")
    return v


def _check_attack_kwargs(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise GateConfigError(f"{key} must be a mapping of argument names to values, got {value!r}")
    for k in value:
        if k in RESERVED_ATTACK_KWARGS:
            own = RESERVED_ATTACK_KWARGS[k]
            fix = f"use the gate's {own}= setting" if own else "gates always attack in eval mode"
            raise GateConfigError(f"{key} may not set {k!r}: {fix}")
    return dict(value)


_VALIDATORS: dict[str, Any] = {
    "attack": _check_str(None),
    "n_examples": _check_int(1),
    "dataset": _check_str(None),
    "split": _check_str(SPLITS),
    "norm": _check_norm,
    "attack_kwargs": _check_attack_kwargs,
    "confidence": _check_confidence_field,
    "method": _check_method,
    "margin": _check_margin,
    "inconclusive": _check_str(POLICIES),
    "allow_masking": _check_bool,
    "allow_nondeterminism": _check_bool,
    "seed": _check_int(0),
}


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


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

    @property
    def accuracy(self) -> float:
        """Robust accuracy ``robust / n``."""
        return self.robust / self.n

    @property
    def baseline_accuracy(self) -> float | None:
        """The baseline's robust accuracy on the same samples, if compared."""
        return None if self.baseline_robust is None else self.baseline_robust / self.n

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, with the accuracy."""
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}


@dataclass
class GateResult:
    """Everything one gate evaluation produced.

    Attributes:
        gate_id: Stable key (the pytest node id), used in baselines and reports.
        spec: The gate's settings.
        rows: One :class:`GateRow` per eps.
        outcomes: ``[K][N]`` per-sample robustness (True = still correctly classified).
        clean_correct: ``[N]`` clean correctness.
        indices: The dataset indices evaluated (sorted).
        sample_hash: sha256 of the dataset name, split and indices.
        model_digest: sha256 of the model's weights.
        attack_config: The attack's settings and the eps grid (what a baseline must match).
        health: Health-check flags as dicts.
        refusals: Why the gate refuses to pass (gradient masking, non-determinism).
        notes: Further remarks (other health warnings, baseline notes).
        wall_time: Seconds spent evaluating.
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
    refusals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_time: float = 0.0

    @property
    def verdict(self) -> str:
        """``fail`` > ``refused`` > ``inconclusive`` > ``pass`` over the rows and checks."""
        verdicts = {r.verdict for r in self.rows}
        if FAIL in verdicts or any(r.regression == "regressed" for r in self.rows):
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
            "health": self.health,
            "refusals": self.refusals,
            "notes": self.notes,
            "wall_time": self.wall_time,
        }
        if outcomes:
            d["indices"] = self.indices
            d["robust"] = [_bits(o) for o in self.outcomes]
            d["clean_correct"] = _bits(self.clean_correct)
        return d


def _bits(values: Sequence[bool]) -> str:
    return "".join("1" if v else "0" for v in values)


def _unbits(s: str) -> list[bool]:
    if not isinstance(s, str) or set(s) - {"0", "1"}:
        raise BaselineError("per-sample outcomes must be strings of 0 and 1")
    return [c == "1" for c in s]


def make_rows(spec: GateSpec, outcomes: Sequence[Sequence[bool]]) -> list[GateRow]:
    """Turn ``[K][N]`` outcomes into one :class:`GateRow` per eps of ``spec``."""
    rows = []
    for eps, threshold, robust in zip(spec.eps, spec.min_accuracy, outcomes, strict=True):
        n, k = len(robust), int(sum(bool(v) for v in robust))
        lower, upper = accuracy_bounds(k, n, spec.confidence, spec.method)
        verdict = threshold_verdict(lower, upper, threshold)
        rows.append(GateRow(eps, n, k, lower, upper, threshold, verdict))
    return rows


# --------------------------------------------------------------------------------------------
# Deterministic evaluation
# --------------------------------------------------------------------------------------------


def sample_list_hash(dataset: str, split: str, indices: Sequence[int]) -> str:
    """sha256 hex of ``"<dataset>:<split>:<i0>,<i1>,..."``: identifies the evaluated samples."""
    text = f"{dataset}:{split}:" + ",".join(str(int(i)) for i in indices)
    return hashlib.sha256(text.encode()).hexdigest()


def load_split(dataset: str, split: str = "test", data_dir: str | os.PathLike | None = None) -> Any:
    """The ``split`` of a ``robustbench_local`` dataset (``data_dir`` or its env variable)."""
    from robustbench_local.data import load_dataset

    train, test = load_dataset(dataset, data_dir=data_dir)
    return test if split == "test" else train


def select_samples(spec: GateSpec, data: Any) -> tuple[Tensor, Tensor, list[int]]:
    """The spec's fixed sample list: ``(x, y, indices)`` with ``sample_indices(N, n, seed)``.

    Raises:
        GateConfigError: ``n_examples`` is larger than the split.
    """
    from robustbench_local.data import sample_indices

    x, y = tensors_of(data)
    total = int(x.shape[0])
    if spec.n_examples > total:
        raise GateConfigError(
            f"n_examples={spec.n_examples} is larger than the {spec.dataset} {spec.split} split "
            f"({total} samples): lower n_examples (or --robustness-n-examples) to at most {total}"
        )
    idx = sample_indices(total, spec.n_examples, spec.seed)
    return x[idx].float(), y[idx].long(), [int(i) for i in idx.tolist()]


def build_attack(spec: GateSpec) -> Any:
    """The spec's attack, seeded, in eval mode.

    Raises:
        GateConfigError: Unknown attack name or arguments it does not accept.
    """
    import attacks

    kwargs = dict(spec.attack_kwargs)
    if spec.norm is not None:
        kwargs["norm"] = spec.norm
    try:
        return attacks.create(spec.attack, seed=spec.seed, eval_mode=True, **kwargs)
    except (TypeError, ValueError) as err:
        raise GateConfigError(f"cannot build attack {spec.attack!r} with {kwargs}: {err}") from err


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch, enable deterministic algorithms; restore the RNG state and flags on exit."""
    import torch

    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextlib.contextmanager
def gate_model(model: nn.Module, device: str | None = None) -> Iterator[tuple[nn.Module, Any]]:
    """The model as a gate evaluates it: fp32, eval mode, on ``device`` (default: its own).

    A model with non-fp32 weights is evaluated as an fp32 copy. Training flags and the device
    are restored on exit.
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"a robustness gate checks a torch.nn.Module, got {type(model).__name__}")
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    target = torch.device(device) if device else home
    net = model
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        net = copy.deepcopy(model).float()
    modes = [(m, m.training) for m in net.modules()]
    net.to(target).eval()
    try:
        yield net, target
    finally:
        for m, mode in modes:
            m.training = mode
        if net is model and target != home:
            model.to(home)


def run_gate(
    spec: GateSpec,
    model: nn.Module,
    *,
    data: Any = None,
    data_dir: str | os.PathLike | None = None,
    device: str | None = None,
    gate_id: str | None = None,
) -> GateResult:
    """Evaluate ``model`` under ``spec`` deterministically and compute its verdict.

    Args:
        spec: The gate.
        model: A classifier taking inputs in [0, 1] and returning logits.
        data: The split to sample from (TensorDataset or ``(x, y)``); default: load
            ``spec.dataset`` / ``spec.split`` from ``data_dir``.
        data_dir: Dataset mirror folder (default: ``ROBUSTBENCH_LOCAL_DATA_DIR``).
        device: Where to evaluate (default: the model's device).
        gate_id: Key for baselines and reports (default: ``spec.name``).

    Returns:
        A :class:`GateResult` (no baseline comparison yet; see :func:`compare_to_baseline`).
    """
    from robustbench_local.evaluate import robustness_curve
    from robustbench_local.models import weights_digest

    start = time.perf_counter()
    split = data if data is not None else load_split(spec.dataset, spec.split, data_dir)
    x, y, indices = select_samples(spec, split)
    attack = build_attack(spec)
    with gate_model(model, device) as (net, dev), deterministic(spec.seed):
        curve = robustness_curve(
            net, (x.to(dev), y.to(dev)), [attack], list(spec.eps),
            seed=spec.seed, device=dev, checks=True, progress=False,
        )  # fmt: skip
        digest = weights_digest(net)
    outcomes = _curve_outcomes(curve, spec)
    result = GateResult(
        gate_id=gate_id or spec.name,
        spec=spec,
        rows=make_rows(spec, outcomes),
        outcomes=outcomes,
        clean_correct=[bool(v) for v in curve.clean_correct.tolist()],
        indices=indices,
        sample_hash=sample_list_hash(spec.dataset, spec.split, indices),
        model_digest=digest,
        attack_config=attack_config(attack, spec),
        wall_time=time.perf_counter() - start,
    )
    apply_health(result, list(getattr(curve, "health", []) or []))
    return result


def attack_config(attack: Any, spec: GateSpec) -> dict[str, Any]:
    """What a baseline must match: the attack's settings, the eps grid and the evaluation mode."""
    cfg = {"attack": attack.config(), "eps": list(spec.eps), "fp32": True, "adaptive": "auto"}
    return json.loads(json.dumps(cfg, default=str))


def _curve_outcomes(curve: Any, spec: GateSpec) -> list[list[bool]]:
    """Headline (worst-case, adaptive where needed) per-sample outcomes, one list per spec eps."""
    robust = curve.worst_case_robust()
    curve_eps = [float(e) for e in curve.eps.tolist()]
    out = []
    for e in spec.eps:
        k = min(range(len(curve_eps)), key=lambda i: abs(curve_eps[i] - e))
        if not math.isclose(curve_eps[k], e, rel_tol=1e-6, abs_tol=1e-9):
            raise RuntimeError(f"the robustness curve has no row for eps={e} (has {curve_eps})")
        out.append([bool(v) for v in robust[k].tolist()])
    return out


def _flag_dict(flag: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(flag) and not isinstance(flag, type):
        return json.loads(json.dumps(dataclasses.asdict(flag), default=str))
    keys = ("name", "ok", "severity", "message", "advice")
    return {k: getattr(flag, k, None) for k in keys}


def apply_health(result: GateResult, flags: Sequence[Any]) -> None:
    """Record health flags; masking or non-determinism flags become refusals unless allowed."""
    from robustbench_local.checks import GRADIENT_MASKING_FLAGS, NONDETERMINISM_FLAGS

    result.health = [_flag_dict(f) for f in flags]
    for f in result.health:
        if f["ok"] or f.get("severity") == "info":
            continue
        text = f"{f['name']}: {f.get('message') or ''}".strip()
        if f.get("advice"):
            text += f" ({f['advice']})"
        if f["name"] in GRADIENT_MASKING_FLAGS:
            _refuse_or_note(
                result, result.spec.allow_masking, "gradient masking", "allow_masking", text
            )
        elif f["name"] in NONDETERMINISM_FLAGS:
            allowed = result.spec.allow_nondeterminism
            _refuse_or_note(result, allowed, "non-determinism", "allow_nondeterminism", text)
        else:
            result.notes.append(f"health warning {text}")


def _refuse_or_note(result: GateResult, allowed: bool, what: str, opt: str, text: str) -> None:
    if allowed:
        result.notes.append(f"{what} flagged but accepted ({opt}=True): {text}")
    else:
        result.refusals.append(
            f"{what} flagged, so the measured robust accuracy cannot be trusted: {text}. "
            f"Fix the model or evaluation, or opt in explicitly with {opt}=True."
        )


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def baseline_entry(result: GateResult) -> dict[str, Any]:
    """The baseline record of one gate result."""
    return {
        "name": result.spec.name,
        "dataset": result.spec.dataset,
        "split": result.spec.split,
        "n": len(result.indices),
        "sample_hash": result.sample_hash,
        "model_digest": result.model_digest,
        "attack_config": result.attack_config,
        "eps": list(result.spec.eps),
        "accuracy": [r.accuracy for r in result.rows],
        "robust": [_bits(o) for o in result.outcomes],
        "clean_correct": _bits(result.clean_correct),
        "recorded": _now(),
    }


def save_baseline(path: str | os.PathLike, results: Sequence[GateResult]) -> Path:
    """Write (or update) a baseline file with these results; other gates in it are kept.

    Returns:
        The path written.
    """
    path = Path(path)
    doc = _read_json(path) if path.exists() else {}
    gates = dict(doc.get("gates", {})) if doc.get("format") == BASELINE_FORMAT else {}
    gates.update({r.gate_id: baseline_entry(r) for r in results})
    doc = {
        "format": BASELINE_FORMAT,
        "version": FORMAT_VERSION,
        "created": _now(),
        "versions": versions(),
        "gates": dict(sorted(gates.items())),
    }
    atomic_write_json(path, doc)
    return path


def load_baseline(path: str | os.PathLike) -> dict[str, Any]:
    """Read a baseline file written by :func:`save_baseline`.

    Raises:
        BaselineError: Missing, unreadable, or not a baseline file.
    """
    path = Path(path)
    if not path.is_file():
        raise BaselineError(
            f"baseline file {path} not found: record one first with --robustness-save-baseline"
        )
    doc = _read_json(path)
    if doc.get("format") != BASELINE_FORMAT or not isinstance(doc.get("gates"), dict):
        raise BaselineError(
            f"{path} is not a robustness baseline file (format {BASELINE_FORMAT!r})"
        )
    if doc.get("version") != FORMAT_VERSION:
        raise BaselineError(
            f"{path} has baseline format version {doc.get('version')}; expected {FORMAT_VERSION}"
        )
    return doc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BaselineError(f"cannot read {path}: {err}") from err
    if not isinstance(doc, dict):
        raise BaselineError(f"{path} does not hold a JSON object")
    return doc


def _config_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _config_diff(old.get(k, "<missing>"), new.get(k, "<missing>"), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} (baseline) != {new!r} (now)"]


def check_compatible(
    result: GateResult, entry: Mapping[str, Any], source: str = "baseline"
) -> None:
    """Refuse a baseline recorded with another attack config or on other samples.

    Raises:
        BaselineError: With the differing settings named.
    """
    diff = _config_diff(entry.get("attack_config"), result.attack_config)
    if diff:
        raise BaselineError(
            f"refusing the baseline for gate {result.spec.name!r} in {source}: it was recorded "
            f"with another attack config ({'; '.join(diff)}). A paired test needs the same "
            "attack on the same samples: re-record the baseline with --robustness-save-baseline."
        )
    if entry.get("sample_hash") != result.sample_hash:
        raise BaselineError(
            f"refusing the baseline for gate {result.spec.name!r} in {source}: it was recorded "
            f"on another sample list ({entry.get('dataset')}/{entry.get('split')}, "
            f"n={entry.get('n')}, hash {str(entry.get('sample_hash'))[:12]}) than this run "
            f"({result.spec.dataset}/{result.spec.split}, n={len(result.indices)}, "
            f"hash {result.sample_hash[:12]}); "
            "dataset, split, n_examples and seed must match. Re-record it with "
            "--robustness-save-baseline."
        )


def compare_to_baseline(
    result: GateResult, entry: Mapping[str, Any], *, family_size: int = 1, source: str = "baseline"
) -> None:
    """Fill each row's paired comparison with the baseline entry of the same gate.

    A row is ``regressed`` at once when its p-value clears Bonferroni over ``family_size``
    comparisons (Holm rejects it then, whatever the others), ``ok`` when it is above
    ``1 - confidence``, else ``pending`` until :func:`apply_holm` sees the whole family.

    Raises:
        BaselineError: Other attack config, other samples, or a malformed entry.
    """
    check_compatible(result, entry, source)
    old_rows = entry.get("robust")
    if not isinstance(old_rows, list) or len(old_rows) != len(result.rows):
        raise BaselineError(f"baseline entry for {result.spec.name!r} in {source} is malformed")
    alpha = 1.0 - result.spec.confidence
    for row, now, old_bits in zip(result.rows, result.outcomes, old_rows, strict=True):
        old = _unbits(old_bits)
        if len(old) != len(now):
            raise BaselineError(
                f"baseline entry for {result.spec.name!r} has {len(old)} samples, not {len(now)}"
            )
        row.baseline_robust = sum(old)
        row.losses = sum(o and not c for o, c in zip(old, now, strict=True))
        row.gains = sum(c and not o for o, c in zip(old, now, strict=True))
        row.p_value = mcnemar_drop_pvalue(row.losses, row.gains, row.n, result.spec.margin)
        if row.p_value <= alpha / max(1, family_size):
            row.regression = "regressed"
        elif row.p_value > alpha:
            row.regression = "ok"
        else:
            row.regression = "pending"
    if entry.get("model_digest") == result.model_digest:
        result.notes.append("same weights as the baseline")


def apply_holm(results: Sequence[GateResult]) -> list[tuple[GateResult, GateRow]]:
    """Holm-correct every compared row of ``results``; return rows newly found regressed.

    A row regresses when its Holm-adjusted p-value is at most ``1 - confidence`` of its gate.
    """
    compared = [(r, row) for r in results for row in r.rows if row.p_value is not None]
    adjusted = holm_adjust([row.p_value for _, row in compared])
    newly = []
    for (res, row), p in zip(compared, adjusted, strict=True):
        row.p_adjusted = p
        regressed = p <= 1.0 - res.spec.confidence
        if regressed and row.regression != "regressed":
            newly.append((res, row))
        row.regression = "regressed" if regressed or row.regression == "regressed" else "ok"
    return newly


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------

_VERDICT_TEXT = {PASS: "PASS", FAIL: "FAIL", INCONCLUSIVE: "INCONCLUSIVE", NO_THRESHOLD: "-"}


def _row_verdict(result: GateResult, row: GateRow) -> str:
    if row.regression == "regressed":
        return "FAIL (drop)"
    text = _VERDICT_TEXT[row.verdict]
    if result.refusals and row.verdict in (PASS, INCONCLUSIVE, NO_THRESHOLD):
        return "REFUSED"
    if row.regression == "pending":
        text += " (drop?)"
    return text


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table_cells(result: GateResult, row: GateRow, compare: bool) -> list[str]:
    cells = [
        result.spec.name,
        result.spec.attack + (f" ({result.spec.norm})" if result.spec.norm else ""),
        f"{row.eps:g}",
        str(row.n),
        _fmt(row.accuracy),
        f"[{row.lower:.3f}, {row.upper:.3f}]",
        "-" if row.threshold is None else f">= {row.threshold:g}",
        _row_verdict(result, row),
    ]
    if compare:
        base = row.baseline_accuracy
        change = None if base is None else row.accuracy - base
        p = row.p_adjusted if row.p_adjusted is not None else row.p_value
        cells += [_fmt(base), "-" if change is None else f"{change:+.3f}", _fmt(p, 4)]
    return cells


def render_table(results: Sequence[GateResult]) -> str:
    """A plain-text table: gate, attack, eps, n, accuracy, interval, threshold, verdict.

    With baseline comparisons, also the baseline accuracy, the change and the (Holm-adjusted
    where known) p-value of the drop. Refusals and notes follow the table.
    """
    if not results:
        return "no robustness gates ran"
    compare = any(row.p_value is not None for r in results for row in r.rows)
    headers = ["gate", "attack", "eps", "n", "accuracy", "interval", "threshold", "verdict"]
    if compare:
        headers += ["baseline", "change", "p(drop)"]
    body = [_table_cells(r, row, compare) for r in results for row in r.rows]
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=True)]
    numeric = {"eps", "n", "accuracy", "baseline", "change", "p(drop)"}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if h in numeric else c.ljust(w)
            for h, c, w in zip(headers, cells, widths, strict=True)
        ).rstrip()

    lines = [line(headers), "  ".join("-" * w for w in widths)]
    lines += [line(cells) for cells in body]
    lines += _table_footer(results, compare)
    return "\n".join(lines)


def _table_footer(results: Sequence[GateResult], compare: bool) -> list[str]:
    kinds = sorted({(r.spec.confidence, r.spec.method) for r in results})
    desc = ", ".join(f"{c:.0%} {m}" for c, m in kinds)
    out = [f"interval: one-sided {desc} bounds. PASS: lower >= threshold; FAIL: upper < threshold."]
    if compare:
        out.append(
            "p(drop): exact McNemar test of a drop larger than the margin, Holm-adjusted across "
            "gates; 'drop?' = decided at the end of the session."
        )
    for r in results:
        out += [f"{r.spec.name}: REFUSED: {text}" for text in r.refusals]
        out += [f"{r.spec.name}: note: {text}" for text in r.notes]
    return out


def failure_message(result: GateResult, policy: str | None = None) -> str:
    """The message of a failing gate: a headline, the table and what to do."""
    verdict = result.verdict
    head = f"robustness gate {result.spec.name!r}: {verdict.upper()}"
    hints = {
        FAIL: "robust accuracy is below the threshold or dropped significantly from the baseline.",
        REFUSED: "health checks flagged the evaluation; see the REFUSED lines.",
        INCONCLUSIVE: (
            "the confidence interval contains the threshold: raise n_examples to decide, or run "
            "with --robustness-inconclusive=warn."
        ),
    }
    return f"{head}: {hints.get(verdict, '')}\n{render_table([result])}"


def report_dict(results: Sequence[GateResult], **extra: Any) -> dict[str, Any]:
    """JSON-able report of a session's gates."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    return {
        "format": REPORT_FORMAT,
        "version": FORMAT_VERSION,
        "created": _now(),
        "versions": versions(),
        "summary": counts,
        **extra,
        "gates": [r.to_dict() for r in results],
    }


def write_report(path: str | os.PathLike, results: Sequence[GateResult], **extra: Any) -> Path:
    """Write :func:`report_dict` as JSON to ``path`` (atomically); return the path."""
    path = Path(path)
    atomic_write_json(path, report_dict(results, **extra))
    return path


def log_to_mlflow(
    results: Sequence[GateResult],
    *,
    experiment: str = "robustness-gates",
    tracking_uri: str | None = None,
    run_name: str | None = None,
) -> str:
    """Log gate results to one MLflow run; return its run id.

    Per gate, metrics ``<gate>/accuracy``, ``/lower``, ``/upper`` (and ``/p_drop`` when
    compared) with ``step`` = eps index, a ``<gate>/verdict`` tag; the table and the JSON
    report are artifacts.
    """
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name or "robustness-gates") as run:
        for r in results:
            key = metric_key(r.spec.name)
            for step, row in enumerate(r.rows):
                metrics = {
                    f"{key}/accuracy": row.accuracy,
                    f"{key}/lower": row.lower,
                    f"{key}/upper": row.upper,
                }
                if row.p_value is not None:
                    metrics[f"{key}/p_drop"] = (
                        row.p_adjusted if row.p_adjusted is not None else row.p_value
                    )
                mlflow.log_metrics(metrics, step=step)
            mlflow.set_tag(f"{key}/verdict", r.verdict)
        counts = report_dict(results)["summary"]
        mlflow.set_tags(
            {"robustness.gates": len(results), **{f"robustness.{k}": v for k, v in counts.items()}}
        )
        mlflow.log_text(render_table(results), "robustness_gates/table.txt")
        mlflow.log_dict(report_dict(results), "robustness_gates/report.json")
        return run.info.run_id
