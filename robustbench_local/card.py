"""The model card: what a benchmark run (or a paper) says about one model on one track.

A :class:`ModelCard` holds RobustBench's fields (accuracies in percent, as in RobustBench) plus
the sample count, a 95% interval, the seed, the weights digest, the suite version, the health
flags and the cost, and round-trips through JSON files (written atomically). Optionally it also
holds the certified accuracy at the track's eps (``certified``: method, settings, accuracy) and
the mean accuracy under common corruptions (``corruptions``: suite, severities, mean); cards
written before these fields existed load unchanged.

References:
    Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
    NeurIPS Datasets and Benchmarks 2021.
    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from defenses.storage import atomic_write_text
from robustbench_local.gates.stats import wilson_interval

THREAT_MODELS = ("linf", "l2")
REPORTED_BY_PAPER = "reported by paper"
BENCHMARKED = "benchmarked locally"
_CARD_FORMAT = 1


def check_threat_model(threat_model: str) -> str:
    """Return ``threat_model`` if it is one of :data:`THREAT_MODELS`.

    Raises:
        ValueError: Naming the known threat models.
    """
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model must be one of {THREAT_MODELS}, got {threat_model!r}")
    return threat_model


def percent_interval(successes: int, n: int) -> tuple[float, float]:
    """The two-sided 95% Wilson interval in percent, rounded to two decimals, as cards store it.

    The interval is the gates' (:func:`robustbench_local.gates.stats.wilson_interval`), the one
    Wilson interval of the project.
    """
    lo, hi = wilson_interval(successes, n)
    return round(100 * lo, 2), round(100 * hi, 2)


@dataclass
class ModelCard:
    """What a benchmark run (or a paper) says about one model on one track.

    Attributes:
        name: Display name (unique within a leaderboard folder).
        architecture: Architecture name (``model.arch`` for zoo models).
        dataset: Track dataset: a registered name (``"mnist"``), or the name of the user's data
            (the folder's or file's name, the import path; ``"arrays"`` for data passed in
            memory), which ``dataset_digest`` identifies.
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The budget, in input units.
        clean_acc: Clean accuracy in percent.
        robust_acc: Robust accuracy in percent under the suite (for reference rows: AutoAttack).
        reported: Robust accuracy the paper reports, in percent (``None`` if none).
        n_examples: Test samples evaluated.
        ci_low: Lower end of the Wilson 95% interval of ``robust_acc`` (percent).
        ci_high: Upper end of that interval (percent).
        seed: Evaluation seed (sample selection and attacks).
        weights_digest: SHA-256 of the state dict (:func:`models.weights_digest`).
        suite_version: :data:`SUITE_VERSION` of the attack suite.
        suite: The suite's configuration.
        health: Health-check flags as dicts.
        cost: Wall time and per-sample forward/backward passes.
        source: :data:`BENCHMARKED` or :data:`REPORTED_BY_PAPER`.
        paper: Citation of the defense.
        link: URL of the paper or model.
        reference: Where reference numbers come from.
        adaptive: Whether BPDA/EOT runs were part of the headline.
        created: ISO timestamp.
        notes: Free text.
        dataset_digest: sha256 of the user's test split as evaluated (float32 ``x``, int64
            ``y``; :func:`robustbench_local.utils.tensor_digest`); ``None`` for a registered
            dataset, whose files are checksummed. Cards with equal digests ran on the same data.
        dataset_origin: Where the user's data came from (``"folder /data/pngs"``,
            ``"file /data/test.npz"``, ``"import mypkg.data:load"``, ``"in memory"``); ``None``
            for a registered dataset.
        certified: The certified accuracy at the track's eps on the same samples, or None:
            ``{"method", "settings", "certifies", "eps", "accuracy" (percent), "n"}``
            (``certifies`` is ``"the smoothed classifier"`` for randomized smoothing).
        corruptions: The accuracy under common corruptions on the same samples, or None:
            ``{"suite", "corruptions", "severities" (1-5, "bench"), "mean_acc" (percent, over
            every corruption and severity), "clean_acc" (percent), "n"}``.
    """

    name: str
    architecture: str
    dataset: str
    threat_model: str
    eps: float
    clean_acc: float
    robust_acc: float
    reported: float | None = None
    n_examples: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    seed: int | None = None
    weights_digest: str | None = None
    suite_version: str | None = None
    suite: dict[str, Any] = field(default_factory=dict)
    health: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, float] = field(default_factory=dict)
    source: str = BENCHMARKED
    paper: str | None = None
    link: str | None = None
    reference: str | None = None
    adaptive: bool = False
    created: str | None = None
    notes: str = ""
    dataset_digest: str | None = None
    dataset_origin: str | None = None
    certified: dict[str, Any] | None = None
    corruptions: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_threat_model(self.threat_model)
        for key in ("clean_acc", "robust_acc", "reported", "ci_low", "ci_high"):
            v = getattr(self, key)
            if v is not None and not 0 <= float(v) <= 100:
                raise ValueError(f"{key} is a percentage in [0, 100], got {v!r}")
        _check_part("certified", self.certified, ("method", "accuracy"), ("accuracy",))
        _check_part(
            "corruptions", self.corruptions, ("suite", "mean_acc"), ("mean_acc", "clean_acc")
        )
        if not float(self.eps) >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps!r}")

    @property
    def is_reference(self) -> bool:
        """True for rows whose numbers come from a paper, not from a local run."""
        return self.source == REPORTED_BY_PAPER

    @property
    def failed_checks(self) -> list[str]:
        """Names of failed warning/error health flags."""
        return [
            h["name"]
            for h in self.health
            if not h.get("ok", True) and h.get("severity", "warning") != "info"
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (with a format version)."""
        return {"format": _CARD_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelCard:
        """Build a card from :meth:`to_dict` output.

        Raises:
            ValueError: Missing required fields, unknown fields or an unknown format version.
        """
        data = dict(d)
        version = data.pop("format", _CARD_FORMAT)
        if version != _CARD_FORMAT:
            raise ValueError(
                f"model card format {version} is not supported (this is {_CARD_FORMAT})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model card fields {unknown}; known: {sorted(names)}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"model card lacks required fields {missing}")
        return cls(**data)

    def to_json(self, indent: int | None = 2) -> str:
        """The card as JSON text."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        """Parse a card from JSON text (see :meth:`from_dict`)."""
        return cls.from_dict(json.loads(text))

    def filename(self) -> str:
        """A file name derived from the name and digest: ``<slug>-<digest8>.json``."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.name).strip("-") or "model"
        return f"{slug}-{(self.weights_digest or 'nodigest')[:8]}.json"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the card; ``path`` is a file, or a folder to write :meth:`filename` into.

        The write is atomic (temporary file, then rename).
        """
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            p = p / self.filename()
        return atomic_write_text(p, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read a card written by :meth:`save`.

        Raises:
            ValueError: The file is not a valid card (the message names the file).
        """
        p = Path(path)
        try:
            return cls.from_json(p.read_text(encoding="utf-8"))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{p} is not a valid model card: {err}") from err


def _check_part(key: str, value: Any, required: tuple[str, ...], percents: tuple[str, ...]) -> None:
    """Check an optional card part: a mapping with ``required`` keys and percentages in range.

    Raises:
        ValueError: Not a mapping, a missing key, or a percentage outside [0, 100].
    """
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a mapping or null, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{key} lacks {missing} (it needs {list(required)})")
    for k in percents:
        v = value.get(k)
        if v is not None and not 0 <= float(v) <= 100:
            raise ValueError(f"{key}.{k} is a percentage in [0, 100], got {v!r}")


__all__ = [
    "BENCHMARKED",
    "REPORTED_BY_PAPER",
    "THREAT_MODELS",
    "ModelCard",
    "check_threat_model",
    "percent_interval",
    "wilson_interval",
]
