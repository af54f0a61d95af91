"""The leaderboard of a track: model cards from a folder plus published reference rows.

:class:`Leaderboard` collects the :class:`~robustbench_local.card.ModelCard` files of a folder
and the published reference rows shipped in ``robustbench_local/reference/*.json`` (marked
"reported by paper"), ranks them by robust accuracy and renders them as a terminal table,
Markdown or a standalone HTML page. :func:`summary` describes one card in a few lines.

Example:
    >>> board = Leaderboard.load("leaderboard/", dataset="mnist", threat_model="linf")
    >>> print(board.to_text())

References:
    Croce et al., "RobustBench: a standardized adversarial robustness benchmark",
    NeurIPS Datasets and Benchmarks 2021.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Iterable
from pathlib import Path

from defenses.storage import atomic_write_text
from robustbench_local.card import (
    REPORTED_BY_PAPER,
    ModelCard,
    check_threat_model,
    percent_interval,
)
from robustbench_local.reference import SUITE_VERSION

logger = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).with_name("reference")
LEADERBOARD_ENV = "ROBUSTBENCH_LOCAL_LEADERBOARD"


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
                d["ci_low"], d["ci_high"] = percent_interval(round(d["robust_acc"] * n / 100), n)
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
        self.threat_model = check_threat_model(threat_model)
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
                    _source(c),
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
            f"robust: worst case of the standard suite v{SUITE_VERSION} (APGD-CE, APGD-T, FAB-T, "
            "Square; APGD-CE and APGD-DLR with EOT for random models) for local rows, AutoAttack "
            "for reference rows; rows marked 'suite v...' or 'reduced' ran another suite and are "
            "not comparable; accuracies in %; reported: the paper's own number."
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
            atomic_write_text(path, page)
        return page


def _source(card: ModelCard) -> str:
    """The source cell; a local card of another (or a reduced) suite version says which."""
    if card.is_reference or card.suite_version in (None, SUITE_VERSION):
        return card.source
    return f"{card.source} (suite v{card.suite_version})"


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
    "LEADERBOARD_ENV",
    "REFERENCE_DIR",
    "Leaderboard",
    "default_leaderboard_dir",
    "reference_cards",
    "summary",
]
