"""The robustness curve: per-attack, per-eps, per-sample robustness and what it cost.

A :class:`Curve` is what :func:`robustbench_local.evaluate.robustness_curve` returns and what
the checks (:mod:`robustbench_local.checks`), the benchmark, the gates and the experiments read:
the eps grid, one boolean ``[K, N]`` robustness matrix per attack, clean correctness, the cost,
the health flags, what the reference suite did
(:class:`~robustbench_local.reference.ReferenceRecord`), and its renderings (a text table, a
figure, JSON). It imports no evaluation code, so both the evaluation and the checks import it
without a cycle. The evaluation builds a curve once, its health included, and never changes it.

The reference row (label ``"reference"``) holds the worst case *with* the reference: a sample
is robust there when no chosen attack and no reference attack broke it. The reference attacks
only the chosen attacks' survivors, and only at some eps (:meth:`Curve.ran`); a sample it breaks
at eps ``e`` counts as broken at every eps ``>= e``. Where it did not run, its accuracy is NaN
and the table shows ``-``.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attacks.result import COST_KEYS
from robustbench_local.certify.curve import CertifiedCurve
from robustbench_local.health import ADAPTIVE_SUFFIX, SEVERITIES, Flag
from robustbench_local.reference import ReferenceRecord

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


@dataclass
class Curve:
    """A robustness curve and everything needed to audit it.

    Attributes:
        eps: ``[K]`` the budgets, increasing.
        attacks: Row labels in evaluation order: the chosen attacks, their derived runs
            (``+adaptive``, ``+margin``, ``+ste``, ``+eot``) and last the ``reference`` row.
        robust: ``label -> bool [K, N]``: sample still classified correctly under that attack.
        clean_correct: ``bool [N]``: correct on the clean input.
        indices: ``[N]`` dataset indices of the evaluated samples.
        cost: ``label -> {"wall_time", "n_forward", "n_backward"}`` (per-sample passes).
        seed: The evaluation seed.
        norm: The threat model's norm.
        health: Check results (:class:`robustbench_local.health.Flag`).
        attack_configs: ``label -> Attack.config()``.
        reference: What the reference suite did (None for curves built without one).
        why: ``label -> why the row is there`` (``"chosen"``, or the reason of a derived run).
        certified: The certified row on the same samples and grid
            (``robustness_curve(..., certify=...)``): a lower bound beside the attacks' upper
            bound; None without one.
    """

    eps: Tensor
    attacks: list[str]
    robust: dict[str, Tensor]
    clean_correct: Tensor
    indices: Tensor
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    seed: int = 0
    norm: str = "linf"
    health: list[Flag] = field(default_factory=list)
    attack_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference: ReferenceRecord | None = None
    why: dict[str, str] = field(default_factory=dict)
    certified: CertifiedCurve | None = None

    @property
    def n_examples(self) -> int:
        """Number of evaluated samples."""
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on clean inputs."""
        return float(self.clean_correct.float().mean())

    @property
    def headline_labels(self) -> list[str]:
        """Labels the worst case is taken over: every row, naive, derived and the reference."""
        return list(self.attacks)

    @property
    def reference_label(self) -> str | None:
        """The row of the worst case with the reference (None when no reference ran)."""
        return None if self.reference is None else self.reference.label

    @property
    def chosen_labels(self) -> list[str]:
        """Every row but the reference's own (the chosen attacks and their derived runs)."""
        ref = self.reference
        if ref is None or ref.shared:
            return list(self.attacks)
        return [a for a in self.attacks if a != ref.label]

    def ran(self, label: str) -> Tensor:
        """``bool [K]``: the eps where a row's attack ran (the reference's may be partial)."""
        ref = self.reference
        if ref is not None and label == ref.label and ref.ran:
            return torch.tensor(ref.ran, dtype=torch.bool)
        return torch.ones(len(self.eps), dtype=torch.bool)

    def accuracy(self, label: str) -> Tensor:
        """Robust accuracy per eps ``[K]`` under one attack (NaN where it did not run)."""
        if label not in self.robust:
            raise ValueError(
                f"no attack {label!r} in this curve; it has: {', '.join(self.attacks)}"
            )
        acc = self.robust[label].float().mean(dim=1)
        return torch.where(self.ran(label), acc, torch.full_like(acc, math.nan))

    def worst_case_robust(self) -> Tensor:
        """``bool [K, N]``: robust under every attack (the per-sample worst case)."""
        out = self.clean_correct.unsqueeze(0).expand(len(self.eps), -1).clone()
        for label in self.headline_labels:
            out &= self.robust[label]
        return out

    def worst_case(self) -> Tensor:
        """Per-sample worst-case robust accuracy per eps ``[K]`` (the reference included)."""
        return self.worst_case_robust().float().mean(dim=1)

    def chosen_worst_case_robust(self) -> Tensor:
        """``bool [K, N]``: robust under every chosen attack and derived run (no reference)."""
        out = self.clean_correct.unsqueeze(0).expand(len(self.eps), -1).clone()
        for label in self.chosen_labels:
            out &= self.robust[label]
        return out

    def chosen_worst_case(self) -> Tensor:
        """Worst-case robust accuracy per eps ``[K]`` of the chosen attacks alone."""
        return self.chosen_worst_case_robust().float().mean(dim=1)

    def total_cost(self) -> dict[str, float]:
        """Cost summed over attacks."""
        return {k: float(sum(c.get(k, 0) for c in self.cost.values())) for k in COST_KEYS}

    def _column_name(self, label: str) -> str:
        ref = self.reference
        return ref.display if ref is not None and label == ref.label else label

    def table(self) -> str:
        """A text table: one row per eps, one column per attack, plus the worst case.

        The reference column shows ``-`` where it did not run; lines below the table say why
        each derived run is there and what the reference did (or that none ran).
        """
        cols = [*(self._column_name(a) for a in self.attacks), "worst_case"]
        accs = [self.accuracy(a) for a in self.attacks] + [self.worst_case()]
        if self.certified is not None:
            cols.append(self.certified.label)
            accs.append(self.certified.accuracy)
        width = max(10, *(len(c) for c in cols))
        head = f"{'eps':>8} " + " ".join(f"{c:>{width}}" for c in cols)
        lines = [f"clean accuracy {self.clean_accuracy:.2%} on {self.n_examples} samples", head]
        for k, e in enumerate(self.eps.tolist()):
            cells = ["-" if math.isnan(float(a[k])) else f"{float(a[k]):.2%}" for a in accs]
            lines.append(f"{e:>8.4g} " + " ".join(f"{c:>{width}}" for c in cells))
        lines += [
            f"{label}: {why}"
            for label, why in self.why.items()
            if why != "chosen" and label != self.reference_label
        ]
        lines += self._reference_lines()
        lines += self._certified_lines()
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: clean accuracy, the worst case at the headline eps, and the health.

        The headline eps is the largest eps where the reference suite ran (where
        ``robustness_curve`` puts it: ``headline_eps``, default the largest of the grid), else
        the largest eps. The certified accuracy at that eps follows when the curve has a
        certified row. The health is ``ok`` when no check failed, else the failed flags by
        name, grouped by severity (errors first).

        Example:
            >>> curve.summary()
            'clean 98.00%, worst case 1.50% at eps 0.3 (linf, n=200); health: ok'
        """
        k = self._headline_index()
        eps = float(self.eps[k])
        text = (
            f"clean {self.clean_accuracy:.2%}, worst case {float(self.worst_case()[k]):.2%} at "
            f"eps {eps:g} ({self.norm}, n={self.n_examples})"
        )
        if self.certified is not None:
            text += f", {self.certified.label} {float(self.certified.accuracy[k]):.2%}"
        return f"{text}; health: {health_summary(self.health)}"

    def _headline_index(self) -> int:
        """Index of the headline eps: the largest where the reference ran, else the last."""
        ran = self.ran(self.reference_label) if self.reference_label is not None else None
        if ran is not None and bool(ran.any()):
            return int(ran.nonzero().max())
        return len(self.eps) - 1

    def _certified_lines(self) -> list[str]:
        cert = self.certified
        if cert is None:
            return []
        if cert.certifies != "the model":
            return [
                f"{cert.label}: certified accuracy of {cert.certifies}, another classifier than "
                "the one the attacks attack: not a bound on this model's robust accuracy"
            ]
        gap = ", ".join(f"{g:.1%}" for g in (self.worst_case() - cert.accuracy).tolist())
        return [
            f"{cert.label}: guaranteed accuracy of the model; its true robust accuracy lies "
            f"between it and the worst case (gap {gap})"
        ]

    def _reference_lines(self) -> list[str]:
        ref = self.reference
        if ref is None:
            return []
        if ref.mode == "off" and self.norm not in ("linf", "l2"):
            return [f"reference: none for {self.norm} (no standard suite); numbers not checked"]
        if ref.mode == "off":
            return ["reference: not run (reference=False); these numbers are not checked"]
        where = [f"{float(e):g}" for e, r in zip(self.eps.tolist(), ref.ran, strict=True) if r]
        kind = "a reduced reference" if ref.reduced else "the standard suite"
        text = f"{ref.display}: worst case with {kind}"
        text += f" at eps {', '.join(where)} (on {ref.model})"
        if ref.shared:
            text += f"; it is the chosen attack {ref.label!r}, not run twice"
        return [text]

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
        """Accuracy vs eps, one line per attack (naive dashed, adaptive solid), worst case bold.

        The reference row is drawn as red crosses at the eps where it ran.

        Args:
            path: Also save the figure here (format from the suffix).
            title: Figure title (default: the sample count).

        Returns:
            The matplotlib figure (not attached to pyplot, so nothing is shown).
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        eps = [0.0, *self.eps.tolist()]
        for label in self.attacks:
            naive = f"{label}{ADAPTIVE_SUFFIX}" in self.robust
            acc = [self.clean_accuracy, *self.accuracy(label).tolist()]
            ref = self.reference
            if ref is not None and label == ref.label and not ref.shared:
                ref_acc = self.accuracy(label).tolist()  # markers where it ran (NaN elsewhere)
                ax.plot(eps[1:], ref_acc, "rx", ms=8, label=self._column_name(label))
                continue
            ax.plot(eps, acc, "--" if naive else "-", marker="o", ms=3, label=label)
        worst = [self.clean_accuracy, *self.worst_case().tolist()]
        ax.plot(eps, worst, "k-", lw=2.5, label="worst case")
        if self.certified is not None:
            self._plot_certified(ax, eps, worst)
        ax.set(xlabel=f"eps ({self.norm})", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.set_title(title or f"Robustness curve ({self.n_examples} samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def _plot_certified(self, ax: Any, eps: list[float], worst: list[float]) -> None:
        """The certified row and the band up to the worst case, where the truth lies."""
        cert = self.certified
        if cert is None:
            return
        low = [cert.clean_accuracy, *cert.accuracy.tolist()]
        ax.plot(eps, low, "g-", marker="s", ms=3, lw=2, label=cert.label)
        if cert.certifies == "the model":
            ax.fill_between(eps, low, worst, color="g", alpha=0.15, label="true robust accuracy")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (robustness matrices as lists of 0/1)."""
        return {
            "eps": self.eps.tolist(),
            "attacks": list(self.attacks),
            "robust": {k: v.int().tolist() for k, v in self.robust.items()},
            "clean_correct": self.clean_correct.int().tolist(),
            "indices": self.indices.tolist(),
            "cost": self.cost,
            "seed": self.seed,
            "norm": self.norm,
            "health": [h.to_dict() for h in self.health],
            "attack_configs": self.attack_configs,
            "reference": None if self.reference is None else self.reference.to_dict(),
            "why": dict(self.why),
            "accuracy": {k: _no_nan(self.accuracy(k)) for k in self.attacks},
            "worst_case": self.worst_case().tolist(),
            "chosen_worst_case": self.chosen_worst_case().tolist(),
            "clean_accuracy": self.clean_accuracy,
            "certified": None if self.certified is None else self.certified.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Curve:
        """Rebuild a curve from :meth:`to_dict` output."""
        return cls(
            eps=torch.tensor(d["eps"], dtype=torch.float64),
            attacks=list(d["attacks"]),
            robust={k: torch.tensor(v, dtype=torch.bool) for k, v in d["robust"].items()},
            clean_correct=torch.tensor(d["clean_correct"], dtype=torch.bool),
            indices=torch.tensor(d["indices"], dtype=torch.long),
            cost=dict(d.get("cost", {})),
            seed=int(d.get("seed", 0)),
            norm=str(d.get("norm", "linf")),
            health=[Flag.from_dict(h) for h in d.get("health", [])],
            attack_configs=dict(d.get("attack_configs", {})),
            reference=None if not d.get("reference") else ReferenceRecord.from_dict(d["reference"]),
            why=dict(d.get("why") or {}),
            certified=_certified_from(d.get("certified")),
        )


def health_summary(flags: Sequence[Flag]) -> str:
    """``"ok"`` when no flag failed, else the failed flags by name, grouped by severity.

    Example:
        >>> health_summary([failed("a", "warning", "m", "x"), failed("b", "error", "m", "x")])
        '1 error (b), 1 warning (a)'
    """
    groups = []
    for severity in reversed(SEVERITIES):  # error, warning, info
        names = [f.name for f in flags if not f.ok and f.severity == severity]
        if names:
            plural = "s" if len(names) > 1 and severity != "info" else ""
            groups.append(f"{len(names)} {severity}{plural} ({', '.join(names)})")
    return ", ".join(groups) or "ok"


def _certified_from(d: Mapping[str, Any] | None) -> CertifiedCurve | None:
    """The certified row of :meth:`Curve.to_dict` output (imported only when there is one)."""
    return CertifiedCurve.from_dict(d) if d else None


def _no_nan(values: Tensor) -> list[float | None]:
    """A list with None where ``values`` is NaN (JSON has no NaN)."""
    return [None if math.isnan(v) else v for v in values.tolist()]


__all__ = ["Curve", "ReferenceRecord", "health_summary"]
