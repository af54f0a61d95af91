"""The leaderboard: model cards from a folder plus published reference rows.

:class:`Leaderboard` collects the :class:`~robustbench_local.card.ModelCard` files of a folder
and the published reference rows shipped in ``robustbench_local/reference/*.json`` (marked
"reported by paper"), groups them by track (dataset, threat model, eps: one table each, under a
header naming the track) and ranks each table by robust accuracy, as a terminal table, Markdown
or a standalone HTML page. Where cards have them, a ``certified`` column (the certified
accuracy at the track's eps, with its method) and a ``corruptions`` column (the mean accuracy
under common corruptions, with the suite and severities) follow the robust accuracy.
:func:`summary` describes one card in a few lines.

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
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from defenses.storage import atomic_write_text
from robustbench_local.benchmark_axes import severities_text
from robustbench_local.card import (
    REPORTED_BY_PAPER,
    ModelCard,
    check_threat_model,
    percent_interval,
)
from robustbench_local.reference import SUITE_VERSION
from robustbench_local.tracks import Track, fmt_eps

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


def _rank_order(card: ModelCard) -> tuple[float, float, str]:
    return (-card.robust_acc, -card.clean_acc, card.name)


class Leaderboard:
    """Model cards grouped by track (data, threat model, eps), ranked by robust accuracy.

    Every track is its own table with a header naming it: a card at eps 0.1 is never ranked
    with the eps 0.3 paper rows, and a card on the user's data only with cards on the same data
    (the same digest, see :class:`~robustbench_local.tracks.Track`).

    Args:
        cards: The cards.
        dataset: Keep only this dataset (a name, or a prefix of a user data digest); default all.
        threat_model: Keep only this threat model; default all.
        eps: Keep only cards at this eps; default all.

    Example:
        >>> board = Leaderboard.load("leaderboard/", dataset="mnist", threat_model="linf")
        >>> print(board.to_text()); board.to_html("board.html")
        >>> [track.title() for track, cards in board.groups()]
        ['mnist, linf, eps=0.1', 'mnist, linf, eps=0.3']
    """

    columns = (
        "#",
        "model",
        "architecture",
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
        dataset: str | None = None,
        threat_model: str | None = None,
        eps: float | None = None,
    ) -> None:
        self.dataset = dataset
        self.threat_model = None if threat_model is None else check_threat_model(threat_model)
        self.eps = eps
        groups: dict[tuple[str, str, float], list[ModelCard]] = {}
        for c in cards:
            track = Track.of(c)
            if track.matches(dataset, threat_model, eps):
                groups.setdefault(track.key, []).append(c)
        tracks = {k: Track.of_group(group) for k, group in groups.items()}
        order = sorted(tracks, key=lambda k: (tracks[k].digest is not None, tracks[k].dataset, k))
        self._groups = [(tracks[k], sorted(groups[k], key=_rank_order)) for k in order]
        self.cards = [c for _, group in self._groups for c in group]
        self.columns = type(self).columns + extra_columns(self.cards)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str] | None = None,
        dataset: str | None = None,
        threat_model: str | None = None,
        *,
        eps: float | None = None,
        references: bool = True,
    ) -> Leaderboard:
        """Cards from ``directory`` plus the published reference rows, optionally filtered.

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
            cards += reference_cards(threat_model=threat_model)
        return cls(cards, dataset, threat_model, eps)

    def __len__(self) -> int:
        return len(self.cards)

    def groups(self) -> list[tuple[Track, list[ModelCard]]]:
        """``(track, cards in rank order)`` per track, in the order the tables are shown."""
        return list(self._groups)

    def title(self, track: Track | None = None) -> str:
        """``Leaderboard: mnist, linf, eps=0.3`` for a track; with no track, the filters."""
        if track is not None:
            return f"Leaderboard: {track.title()}"
        shown = [f for f in (self.dataset, self.threat_model) if f is not None]
        if self.eps is not None:
            shown.append(f"eps={fmt_eps(self.eps)}")
        return "Leaderboard" + (f": {', '.join(shown)}" if shown else "")

    def rows(self, track: Track | None = None) -> list[list[str]]:
        """Cell strings per card in rank order (rank within its track); one track or all."""
        extra = self.columns[len(type(self).columns) :]
        return [
            _cells(rank, c) + extra_cells(c, extra)
            for t, group in self._groups
            if track is None or t == track
            for rank, c in enumerate(group, start=1)
        ]

    def to_text(self) -> str:
        """Fixed-width terminal tables, one per track, each under its header."""
        if not self._groups:
            return self._empty()
        blocks = [self._text_table(track) for track, _ in self._groups]
        return "\n\n".join([*blocks, self._legend()])

    def _text_table(self, track: Track) -> str:
        rows = self.rows(track)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(self.columns)]
        line = "  ".join(h.ljust(w) for h, w in zip(self.columns, widths, strict=True))
        body = [
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        rule = "  ".join("-" * w for w in widths)
        return "\n".join([self.title(track), line.rstrip(), rule, *body])

    def _empty(self) -> str:
        return f"{self.title()}: no cards match (run `python -m robustbench_local benchmark`)"

    def _legend(self) -> str:
        return axes_legend(self.columns) + (
            "One table per track (data, threat model, eps); user data is identified by the "
            f"sha256 of its test split. robust: worst case of the standard suite v{SUITE_VERSION} "
            "(APGD-CE, APGD-T, FAB-T, Square; APGD-CE and APGD-DLR with EOT for random models) "
            "for local rows, AutoAttack for reference rows; rows marked 'suite v...' or "
            "'reduced' ran another suite and are not comparable; accuracies in %; reported: the "
            "paper's own number."
        )

    def to_markdown(self) -> str:
        """GitHub-flavoured Markdown: a ``##`` header and a table per track."""
        if not self._groups:
            return self._empty()

        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        head = "| " + " | ".join(self.columns) + " |"
        sep = "|" + "|".join("---:" if c in ("#", "clean", "robust", "reported", "n") else "---"
                             for c in self.columns) + "|"  # fmt: skip
        parts = []
        for track, _ in self._groups:
            body = ["| " + " | ".join(esc(c) for c in r) + " |" for r in self.rows(track)]
            parts += [f"## {esc(self.title(track))}", "", head, sep, *body, ""]
        return "\n".join([*parts, self._legend()])

    def to_html(self, path: str | os.PathLike[str] | None = None) -> str:
        """A standalone HTML page with a headed table per track; written to ``path`` if given."""
        title = html.escape(self.title())
        tables = "\n".join(self._html_table(track, group) for track, group in self._groups)
        page = (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
            f"<title>{title}</title>\n<style>body{{font-family:sans-serif}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            "tr.reference{color:#555;font-style:italic}</style></head>\n<body>"
            f"<h1>{title}</h1>\n{tables or html.escape(self._empty())}\n"
            f"<p>{html.escape(self._legend())}</p>\n</body></html>\n"
        )
        if path is not None:
            atomic_write_text(path, page)
        return page

    def _html_table(self, track: Track, group: list[ModelCard]) -> str:
        cells = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "\n".join(
            "<tr" + (' class="reference"' if c.is_reference else "") + ">"
            + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>"
            for c, r in zip(group, self.rows(track), strict=True)
        )  # fmt: skip
        head = html.escape(self.title(track))
        return f"<h2>{head}</h2>\n<table>\n<tr>{cells}</tr>\n{body}\n</table>"


def _cells(rank: int, c: ModelCard) -> list[str]:
    """One card's row: rank, name, architecture, accuracies, interval, n, source, health."""
    ci = "-" if c.ci_low is None else f"{c.ci_low:.1f}-{c.ci_high:.1f}"
    failed = c.failed_checks
    health = "-" if c.is_reference else ("ok" if not failed else ",".join(failed))
    return [
        str(rank),
        c.name,
        c.architecture,
        _fmt_pct(c.clean_acc),
        _fmt_pct(c.robust_acc),
        ci,
        _fmt_pct(c.reported),
        "-" if c.n_examples is None else str(c.n_examples),
        _source(c),
        health,
    ]


CERTIFIED_COLUMN, CORRUPTION_COLUMN = "certified", "corruptions"
"""The optional columns: shown when some card of the board has the field."""


def extra_columns(cards: Iterable[ModelCard]) -> tuple[str, ...]:
    """The optional columns the cards call for (certified, corruptions), in that order."""
    cards = list(cards)
    out = []
    if any(c.certified for c in cards):
        out.append(CERTIFIED_COLUMN)
    if any(c.corruptions for c in cards):
        out.append(CORRUPTION_COLUMN)
    return tuple(out)


def extra_cells(card: ModelCard, columns: Iterable[str]) -> list[str]:
    """A card's cells of the optional columns (``-`` where it lacks the field)."""
    cells = []
    for col in columns:
        if col == CERTIFIED_COLUMN:
            cert = card.certified
            cells.append("-" if not cert else f"{cert['accuracy']:.2f} ({cert['method']})")
        elif col == CORRUPTION_COLUMN:
            corr = card.corruptions
            cells.append("-" if not corr else _corruption_cell(corr))
    return cells


def _corruption_cell(corr: dict[str, Any]) -> str:
    """``85.31 (mnist_c 1-5)``: the mean, the suite and the severities."""
    levels = severities_text(corr.get("severities") or [])
    return f"{corr['mean_acc']:.2f} ({corr['suite']} {levels})".replace(" )", ")")


def axes_legend(columns: Iterable[str]) -> str:
    """What the optional columns mean (empty when the board has none)."""
    parts = []
    if CERTIFIED_COLUMN in columns:
        parts.append(
            "certified: certified accuracy at the track's eps on the same samples (its method "
            "in brackets; a lower bound where robust is an upper one; for smoothing, of the "
            "smoothed classifier)."
        )
    if CORRUPTION_COLUMN in columns:
        parts.append(
            "corruptions: mean accuracy over the suite's corruptions and severities on the "
            "same samples."
        )
    return "".join(f"{p} " for p in parts)


def axes_summary(card: ModelCard) -> list[str]:
    """The summary lines of a card's certified and corruption fields."""
    lines = []
    cert = card.certified
    if cert:
        own = ", ".join(f"{k}={v}" for k, v in (cert.get("settings") or {}).items())
        lines.append(
            f"  certified {cert['accuracy']:.2f}% by {cert['method']}"
            + (f" ({own})" if own else "")
            + f", certifies {cert.get('certifies', 'the model')}"
        )
    corr = card.corruptions
    if corr:
        lines.append(
            f"  corruptions: mean {corr['mean_acc']:.2f}% over {len(corr.get('corruptions', []))} "
            f"{corr['suite']} corruption(s), severities "
            f"{severities_text(corr.get('severities') or [])} (clean {corr.get('clean_acc')}%)"
        )
    return lines


def _source(card: ModelCard) -> str:
    """The source cell; a local card of another (or a reduced) suite version says which."""
    if card.is_reference or card.suite_version in (None, SUITE_VERSION):
        return card.source
    return f"{card.source} (suite v{card.suite_version})"


def summary(card: ModelCard) -> str:
    """A few human-readable lines about a card."""
    lines = [
        f"{card.name} ({card.architecture}) on {card.dataset} {card.threat_model} "
        f"eps={fmt_eps(card.eps)}",
        f"  clean {card.clean_acc:.2f}%  robust {card.robust_acc:.2f}% "
        f"(95% CI {card.ci_low}-{card.ci_high}) on {card.n_examples} samples",
        f"  suite v{card.suite_version}, seed {card.seed}, digest {str(card.weights_digest)[:16]}",
    ]
    if card.dataset_digest:
        lines.append(
            f"  data: {card.dataset_origin or 'user data'}, sha256 {card.dataset_digest[:16]}"
        )
    lines += axes_summary(card)
    if card.failed_checks:
        lines.append(f"  health warnings: {', '.join(card.failed_checks)}")
    return "\n".join(lines)


__all__ = [
    "CERTIFIED_COLUMN",
    "CORRUPTION_COLUMN",
    "LEADERBOARD_ENV",
    "REFERENCE_DIR",
    "Leaderboard",
    "axes_legend",
    "axes_summary",
    "default_leaderboard_dir",
    "extra_cells",
    "extra_columns",
    "reference_cards",
    "summary",
]
