"""A local RobustBench: a fixed strong attack suite, model cards and a leaderboard per track.

:func:`benchmark` evaluates a model on a track (dataset, threat model, eps) with a fixed suite,
APGD-CE followed by the targeted APGD-DLR on the survivors (the per-sample worst case, as in the
AutoAttack cascade minus FAB and Square), through :func:`robustness_curve`, so non-differentiable
or random models are also attacked adaptively (BPDA/EOT) and the health checks run. The result
is a :class:`ModelCard` (JSON) with RobustBench's fields plus the sample count, a Wilson 95%
interval, the seed, the weights digest, the suite version, the health flags and the cost.
A :class:`Leaderboard` collects the cards of a folder and the published reference rows shipped
in ``robustbench_local/reference/*.json`` (marked "reported by paper") and renders them as a
terminal table, Markdown or HTML.

Accuracies on cards are percentages (``98.53``), as in RobustBench.

Example:
    >>> card = benchmark(model, dataset="mnist", threat_model="linf", eps=0.3, n_examples=1000)
    >>> card.save("leaderboard/")
    >>> print(Leaderboard.load("leaderboard/", dataset="mnist", threat_model="linf").to_text())

References:
    Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
    NeurIPS Datasets and Benchmarks 2021.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import attacks as atk_lib
from defenses.storage import atomic_write_text
from robustbench_local.data import load_dataset
from robustbench_local.models import weights_digest

logger = logging.getLogger(__name__)

SUITE_VERSION = "1"
"""Bump when the standard suite changes; cards of different versions are not comparable."""
SUITE_LABEL = "apgd_ce+apgd_dlr"
THREAT_MODELS = ("linf", "l2")
REFERENCE_DIR = Path(__file__).with_name("reference")
LEADERBOARD_ENV = "ROBUSTBENCH_LOCAL_LEADERBOARD"
REPORTED_BY_PAPER = "reported by paper"
BENCHMARKED = "benchmarked locally"
_CARD_FORMAT = 1


# ============================================================================== statistics


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95%), as fractions in [0, 1].

    Raises:
        ValueError: ``n < 1`` or ``successes`` outside ``[0, n]``.
    """
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ============================================================================== model card


@dataclass
class ModelCard:
    """What a benchmark run (or a paper) says about one model on one track.

    Attributes:
        name: Display name (unique within a leaderboard folder).
        architecture: Architecture name (``model.arch`` for zoo models).
        dataset: Track dataset (``"mnist"``).
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

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise ValueError(
                f"threat_model must be one of {THREAT_MODELS}, got {self.threat_model!r}"
            )
        for key in ("clean_acc", "robust_acc", "reported", "ci_low", "ci_high"):
            v = getattr(self, key)
            if v is not None and not 0 <= float(v) <= 100:
                raise ValueError(f"{key} is a percentage in [0, 100], got {v!r}")
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


# ============================================================================== benchmark


def standard_suite(
    threat_model: str = "linf",
    *,
    steps: int = 100,
    n_target_classes: int = 9,
    seed: int = 0,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> atk_lib.AttackSuite:
    """APGD-CE, then targeted APGD-DLR on the survivors (AutoAttack's first two attacks).

    Raises:
        ValueError: Unknown threat model or bad attack settings.
    """
    norm = _check_threat_model(threat_model)
    common = {"norm": norm, "steps": steps, "seed": seed, "bounds": bounds}
    return atk_lib.AttackSuite(
        [
            atk_lib.create("apgd_ce", **common),
            atk_lib.create("apgd_dlr", n_target_classes=n_target_classes, **common),
        ],
        seed=seed,
    )


def _check_threat_model(threat_model: str) -> str:
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model must be one of {THREAT_MODELS}, got {threat_model!r}")
    return threat_model


def benchmark(
    model: nn.Module,
    dataset: str = "mnist",
    threat_model: str = "linf",
    eps: float = 0.3,
    n_examples: int = 1000,
    *,
    name: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    reported: float | None = None,
    steps: int = 100,
    n_target_classes: int = 9,
    checks: bool = True,
    progress: bool = False,
) -> ModelCard:
    """Evaluate ``model`` on a track with the standard suite and return its model card.

    Args:
        model: A classifier (inputs in [0, 1], logits out), in eval mode.
        dataset: Track dataset (any of :func:`data.dataset_names`); its test split is used.
        threat_model: ``"linf"`` or ``"l2"``.
        eps: The budget, in input units (0.3 for the MNIST linf track).
        n_examples: Test samples evaluated (a fixed subset chosen by ``seed``).
        name: Card name (default: the architecture and the digest's first 8 characters).
        data_dir: Dataset mirror (default: ``$ROBUSTBENCH_LOCAL_DATA_DIR`` or the cache).
        batch_size: Samples per batch.
        seed: Sample selection and attack seed.
        device: Where to evaluate (default: the model's device).
        reported: Robust accuracy the paper reports for this model, in percent.
        steps: APGD steps per run (default 100, the suite standard; fewer only for tests, and
            the card then notes the non-standard suite).
        n_target_classes: Targets of APGD-DLR (default 9, the suite standard).
        checks: Run the preflight and gradient-masking checks (recorded on the card).
        progress: Show a progress bar.

    Returns:
        A :class:`ModelCard` (accuracies in percent).

    Raises:
        ValueError: Unknown dataset or threat model, bad eps or ``n_examples``, or a model that
            fails the preflight.
    """
    from robustbench_local.evaluate import robustness_curve

    _check_threat_model(threat_model)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"eps must be a positive number, got {eps!r}")
    _, test = load_dataset(dataset, data_dir)
    suite = standard_suite(threat_model, steps=steps, n_target_classes=n_target_classes, seed=seed)
    curve = robustness_curve(
        model,
        test,
        {SUITE_LABEL: suite},
        [float(eps)],
        n_examples=n_examples,
        batch_size=batch_size,
        seed=seed,
        device=device,
        checks=checks,
        progress=progress,
    )
    return card_from_curve(
        curve,
        model,
        dataset=dataset,
        threat_model=threat_model,
        eps=float(eps),
        name=name,
        reported=reported,
        suite=suite,
        standard=(steps == 100 and n_target_classes == 9),
    )


def card_from_curve(
    curve: Any,
    model: nn.Module,
    *,
    dataset: str,
    threat_model: str,
    eps: float,
    name: str | None = None,
    reported: float | None = None,
    suite: atk_lib.Attack | None = None,
    standard: bool = True,
) -> ModelCard:
    """Turn a one-eps robustness curve of the suite into a :class:`ModelCard`."""
    robust = curve.worst_case_robust()[0]
    n = int(robust.numel())
    k = int(robust.sum())
    lo, hi = wilson_interval(k, n)
    digest = weights_digest(model)
    arch = str(getattr(model, "arch", None) or type(model).__name__)
    health = [h.to_dict() if hasattr(h, "to_dict") else dict(h) for h in curve.health]
    notes = "" if standard else "non-standard suite settings: not comparable with the track"
    return ModelCard(
        name=name or f"{arch}-{digest[:8]}",
        architecture=arch,
        dataset=dataset,
        threat_model=threat_model,
        eps=eps,
        clean_acc=round(100 * curve.clean_accuracy, 2),
        robust_acc=round(100 * k / n, 2),
        reported=reported,
        n_examples=n,
        ci_low=round(100 * lo, 2),
        ci_high=round(100 * hi, 2),
        seed=int(curve.seed),
        weights_digest=digest,
        suite_version=SUITE_VERSION if standard else f"{SUITE_VERSION}-custom",
        suite=_plain(suite.config()) if suite is not None else {},
        health=_plain(health),
        cost={**curve.total_cost(), "n_examples": n},
        source=BENCHMARKED,
        adaptive=any(label.endswith("+adaptive") for label in curve.attacks),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        notes=notes,
    )


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (tuples become lists), so cards round-trip exactly."""
    return json.loads(json.dumps(value, default=str))


# ============================================================================== leaderboard


def reference_cards(
    dataset: str | None = None,
    threat_model: str | None = None,
    directory: str | os.PathLike[str] = REFERENCE_DIR,
) -> list[ModelCard]:
    """Published reference rows (``reference/*.json``), optionally for one track.

    Each file holds ``{"dataset", "threat_model", "eps", "sources": [...], "entries": [...]}``;
    every entry becomes a card with ``source = "reported by paper"``.
    """
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        track = json.loads(path.read_text(encoding="utf-8"))
        if dataset is not None and track["dataset"] != dataset:
            continue
        if threat_model is not None and track["threat_model"] != threat_model:
            continue
        for entry in track["entries"]:
            d = {
                "dataset": track["dataset"],
                "threat_model": track["threat_model"],
                "eps": track["eps"],
                "n_examples": track.get("n_examples"),
                "reference": track.get("reference"),
                "source": REPORTED_BY_PAPER,
                **entry,
            }
            if d["n_examples"] and "ci_low" not in d:
                n = int(d["n_examples"])
                lo, hi = wilson_interval(round(d["robust_acc"] * n / 100), n)
                d["ci_low"], d["ci_high"] = round(100 * lo, 2), round(100 * hi, 2)
            try:
                out.append(ModelCard.from_dict(d))
            except (ValueError, TypeError) as err:
                raise ValueError(f"bad reference entry in {path}: {err}") from err
    return out


def default_leaderboard_dir() -> Path:
    """``$ROBUSTBENCH_LOCAL_LEADERBOARD`` or ``./leaderboard``."""
    return Path(os.environ.get(LEADERBOARD_ENV) or "leaderboard")


def _fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


class Leaderboard:
    """Model cards of one track (dataset, threat model), ranked by robust accuracy.

    Args:
        cards: The cards (other tracks are dropped).
        dataset: The track's dataset.
        threat_model: The track's threat model.
        eps: Keep only cards at this eps (default: all, with an eps column).

    Example:
        >>> board = Leaderboard.load("leaderboard/", dataset="mnist", threat_model="linf")
        >>> print(board.to_text()); board.to_html("board.html")
    """

    columns = (
        "#",
        "model",
        "architecture",
        "eps",
        "clean",
        "robust",
        "95% CI",
        "reported",
        "n",
        "source",
        "health",
    )

    def __init__(
        self,
        cards: Iterable[ModelCard],
        dataset: str = "mnist",
        threat_model: str = "linf",
        eps: float | None = None,
    ) -> None:
        self.dataset = dataset
        self.threat_model = _check_threat_model(threat_model)
        self.eps = eps
        kept = [
            c
            for c in cards
            if c.dataset == dataset
            and c.threat_model == threat_model
            and (eps is None or math.isclose(c.eps, eps, rel_tol=1e-6))
        ]
        self.cards = sorted(kept, key=lambda c: (c.eps, -c.robust_acc, -c.clean_acc, c.name))

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str] | None = None,
        dataset: str = "mnist",
        threat_model: str = "linf",
        *,
        eps: float | None = None,
        references: bool = True,
    ) -> Leaderboard:
        """Cards from ``directory`` plus the reference rows of the track.

        ``directory`` holds ``*.json`` cards (default :func:`default_leaderboard_dir`). A missing
        default folder gives the reference rows only; a missing folder passed explicitly is an
        error.

        Raises:
            FileNotFoundError: ``directory`` was given and does not exist.
            ValueError: A file in it is not a valid model card.
        """
        explicit = directory is not None
        folder = Path(directory) if explicit else default_leaderboard_dir()
        cards: list[ModelCard] = []
        if folder.is_dir():
            cards = [ModelCard.load(p) for p in sorted(folder.glob("*.json"))]
        elif explicit:
            raise FileNotFoundError(
                f"leaderboard folder {folder} does not exist; create it with "
                "`python -m robustbench_local benchmark ... --out` or pass another --dir"
            )
        else:
            logger.info("no leaderboard folder %s; showing reference rows only", folder)
        if references:
            cards += reference_cards(dataset, threat_model)
        return cls(cards, dataset, threat_model, eps)

    def __len__(self) -> int:
        return len(self.cards)

    def title(self) -> str:
        """``Leaderboard: MNIST, linf`` (and the eps when fixed)."""
        eps = f", eps={self.eps:g}" if self.eps is not None else ""
        return f"Leaderboard: {self.dataset}, {self.threat_model}{eps}"

    def rows(self) -> list[list[str]]:
        """One row of cell strings per card, in rank order (rank per eps)."""
        out = []
        rank, last_eps = 0, None
        for c in self.cards:
            rank = 1 if c.eps != last_eps else rank + 1
            last_eps = c.eps
            ci = "-" if c.ci_low is None else f"{c.ci_low:.1f}-{c.ci_high:.1f}"
            failed = c.failed_checks
            health = "-" if c.is_reference else ("ok" if not failed else ",".join(failed))
            out.append(
                [
                    str(rank),
                    c.name,
                    c.architecture,
                    f"{c.eps:g}",
                    _fmt_pct(c.clean_acc),
                    _fmt_pct(c.robust_acc),
                    ci,
                    _fmt_pct(c.reported),
                    "-" if c.n_examples is None else str(c.n_examples),
                    c.source,
                    health,
                ]
            )
        return out

    def to_text(self) -> str:
        """A fixed-width terminal table."""
        rows = self.rows()
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(self.columns)
        ]
        line = "  ".join(h.ljust(w) for h, w in zip(self.columns, widths, strict=True))
        body = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        return "\n".join(
            [self.title(), line.rstrip(), "  ".join("-" * w for w in widths), *body, self._legend()]
        )

    def _legend(self) -> str:
        return (
            "robust: worst case of APGD-CE + APGD-DLR (local rows) or AutoAttack (reference "
            "rows); accuracies in %; reported: the paper's own number."
        )

    def to_markdown(self) -> str:
        """A GitHub-flavoured Markdown table."""

        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        head = "| " + " | ".join(self.columns) + " |"
        sep = "|" + "|".join("---:" if c in ("#", "clean", "robust", "reported", "n") else "---"
                             for c in self.columns) + "|"  # fmt: skip
        body = ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows()]
        return "\n".join([f"## {self.title()}", "", head, sep, *body, "", self._legend()])

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """A standalone HTML page with the table; written to ``path`` if given."""
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "\n".join(
            "<tr" + (' class="reference"' if c.is_reference else "") + ">"
            + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
            for c, r in zip(self.cards, self.rows(), strict=True)
        )  # fmt: skip
        title = html.escape(self.title())
        page = (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title>\n<style>body{{font-family:sans-serif}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            "tr.reference{color:#555;font-style:italic}</style></head>\n<body>"
            f"<h1>{title}</h1>\n<table>\n<tr>{cells}</tr>\n{body}\n</table>\n"
            f"<p>{html.escape(self._legend())}</p>\n</body></html>\n"
        )
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page


def summary(card: ModelCard) -> str:
    """A few human-readable lines about a card."""
    lines = [
        f"{card.name} ({card.architecture}) on {card.dataset} {card.threat_model} eps={card.eps:g}",
        f"  clean {card.clean_acc:.2f}%  robust {card.robust_acc:.2f}% "
        f"(95% CI {card.ci_low}-{card.ci_high}) on {card.n_examples} samples",
        f"  suite v{card.suite_version}, seed {card.seed}, digest {str(card.weights_digest)[:16]}",
    ]
    if card.failed_checks:
        lines.append(f"  health warnings: {', '.join(card.failed_checks)}")
    return "\n".join(lines)


__all__ = [
    "BENCHMARKED",
    "REPORTED_BY_PAPER",
    "SUITE_VERSION",
    "Leaderboard",
    "ModelCard",
    "benchmark",
    "card_from_curve",
    "default_leaderboard_dir",
    "reference_cards",
    "standard_suite",
    "summary",
    "wilson_interval",
]
