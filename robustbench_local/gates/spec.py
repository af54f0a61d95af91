"""The gate specification: what a gate checks and how strictly, validated with clear messages.

A marker (``@pytest.mark.robustness(...)``) or a YAML gate gives the settings;
:meth:`GateSpec.from_kwargs` validates them (every error names the setting and the fix) and
normalises them (eps sorted with their thresholds, one threshold broadcast to every eps, names
lower-cased).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from robustbench_local.gates.axis_spec import (
    axis_to_dict,
    check_against_attack,
    check_axis_settings,
)
from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.stats import check_confidence, check_method

POLICIES = ("fail", "warn", "pass")
SPLITS = ("test", "train")
NORMS = ("linf", "l2")
# Attack arguments a gate sets itself: the gate fixes seeds and eval mode so verdicts repeat.
RESERVED_ATTACK_KWARGS = {"eps": "eps", "seed": "seed", "norm": "norm", "eval_mode": None}

Validator = Callable[[Any, str], Any]


@dataclass(frozen=True)
class GateSpec:
    """What a gate checks and how strictly.

    Attributes:
        name: Display name (the test or YAML gate name).
        attack: A registered attack name (``attacks.names()``), e.g. ``"pgd"``.
        eps: Budgets, sorted increasingly (input units: 0.3 on MNIST).
        min_accuracy: Threshold per eps in [0, 1], or None for "report and compare only".
            One threshold (a number or a one-item list) applies to every eps; a list of
            another length than the eps is an error.
        n_examples: Samples drawn (a fixed, hashed list) from the split.
        dataset: Any data spec of ``robustbench_local.load_dataset``: a registered name, a
            folder of images in class subfolders, an ``.npz``/``.pt`` file of arrays or
            ``module:function``; relative paths are relative to the gate file (YAML) or the
            test file (marker).
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
        reference: The reference suite, whose worst case with the attack is the verdict's
            number: ``"auto"`` (default: at the largest eps), ``"all"`` (every eps),
            ``False`` (none; the report says so) or a mapping of reduced settings such as
            ``{"n_target_classes": 3, "square_queries": 500}`` (at the largest eps, labelled
            reduced).
        certify: A certification method (``"ibp"``, ``"crown"``, ``"milp"``,
            ``"smoothing"``) or ``{"method": ..., **settings}``: the gate also certifies its
            samples on its grid and norm (:mod:`~robustbench_local.gates.axis_spec`); None: no
            certified rows.
        min_certified_accuracy: Certified-accuracy threshold per eps (one for every eps, or
            one per eps), judged with the same bounds; None: report only.
        corruptions: ``"auto"`` or corruption names: the gate also measures accuracy under
            common corruptions on its samples; None: no corruption rows (``"auto"`` when
            ``min_corruption_accuracy`` is given without it).
        severities: Corruption severities, 1-5, None for each corruption's benchmark level
            (written ``"bench"``).
        min_corruption_accuracy: ``{"mean": t}`` for the mean over every corruption and
            severity, and/or ``{name: t}`` per corruption (averaged over the severities); a
            number means ``{"mean": number}``. The bounds use the sample count N, not the
            number of corrupted images (:func:`~robustbench_local.gates.stats.mean_bounds`).
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
    reference: str | bool | Mapping[str, int] = "auto"
    certify: str | Mapping[str, Any] | None = None
    min_certified_accuracy: tuple[float | None, ...] | None = None
    corruptions: str | tuple[str, ...] | None = None
    severities: tuple[int | None, ...] = (1, 2, 3, 4, 5)
    min_corruption_accuracy: Mapping[str, float] | None = None

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
        values.update(check_axis_settings(kw, sorted(range(len(eps)), key=eps.__getitem__)))
        for key, value in kw.items():
            values[key] = _VALIDATORS[key](value, key)
        spec = cls(name=str(name), **values)
        check_against_attack(spec)
        return spec

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
        if isinstance(self.reference, Mapping):
            d["reference"] = dict(self.reference)
        d.update(axis_to_dict(self))
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
    """One threshold per eps: a single one (number or one-item list) applies to every eps.

    Raises:
        GateConfigError: A list whose length is neither 1 nor the number of eps (both named).
    """
    if value is None:
        return [None] * k
    values = _as_list(value)
    if len(values) == 1:
        values = values * k
    if len(values) != k:
        raise GateConfigError(
            f"min_accuracy has {len(values)} values for {k} eps values: give one threshold "
            f"(it applies to every eps) or {k}, one per eps in the order of eps"
        )
    return [None if v is None else _check_threshold(v) for v in values]


def _check_threshold(value: Any) -> float:
    t = _number(value, "min_accuracy")
    if not 0.0 <= t <= 1.0:
        raise GateConfigError(
            f"min_accuracy must be in [0, 1] (a fraction of samples, e.g. 0.85 for 85%), "
            f"got {value}"
        )
    return t


def _check_str(choices: Sequence[str] | None) -> Validator:
    def check(value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise GateConfigError(f"{key} must be a non-empty string, got {value!r}")
        v = value.lower()
        if choices is not None and v not in choices:
            raise GateConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
        return v

    return check


def _check_dataset(value: Any, key: str) -> str:
    """A data spec: registered names lower-cased, paths and import paths kept as written."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise GateConfigError(
            f"{key} must be a data spec (a registered name such as mnist, a folder of images, "
            f"an .npz or .pt file, or module:function), got {value!r}"
        )
    return value if any(c in value for c in "/\\.:~") else value.lower()


def _check_norm(value: Any, key: str) -> str | None:
    return None if value is None else _check_str(NORMS)(value, key)


def _check_int(minimum: int) -> Validator:
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
    return check_confidence(value)


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


REFERENCE_SETTINGS = ("steps", "n_target_classes", "square_queries", "eot_samples")
"""Keys of a reduced ``reference:`` mapping (the budgets of ``standard_suite``)."""


def _check_reference(value: Any, key: str) -> str | bool | dict[str, int]:
    if value is True or value is None:
        return "auto"
    if value is False:
        return False
    if isinstance(value, str) and value.lower() in ("auto", "all", "false", "off"):
        v = value.lower()
        return False if v in ("false", "off") else v
    if isinstance(value, Mapping):
        unknown = sorted(set(map(str, value)) - set(REFERENCE_SETTINGS))
        if unknown:
            raise GateConfigError(
                f"unknown {key} settings {unknown}; a reduced reference takes "
                f"{', '.join(REFERENCE_SETTINGS)}"
            )
        return {str(k): _check_int(1)(v, f"{key}.{k}") for k, v in value.items()}
    raise GateConfigError(
        f"{key} must be auto, all, false or a mapping of reduced settings such as "
        f"{{n_target_classes: 3, square_queries: 500}}; got {value!r}"
    )


_VALIDATORS: dict[str, Validator] = {
    "attack": _check_str(None),
    "n_examples": _check_int(1),
    "dataset": _check_dataset,
    "split": _check_str(SPLITS),
    "norm": _check_norm,
    "attack_kwargs": _check_attack_kwargs,
    "confidence": _check_confidence_field,
    "method": check_method,
    "margin": _check_margin,
    "inconclusive": _check_str(POLICIES),
    "allow_masking": _check_bool,
    "allow_nondeterminism": _check_bool,
    "seed": _check_int(0),
    "reference": _check_reference,
}


__all__ = [
    "NORMS",
    "POLICIES",
    "REFERENCE_SETTINGS",
    "RESERVED_ATTACK_KWARGS",
    "SPLITS",
    "GateSpec",
]
