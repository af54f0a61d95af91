"""The robustness curve: per-attack, per-eps, per-sample robustness and what it cost.

A :class:`Curve` is what :func:`robustbench_local.evaluate.robustness_curve` returns and what
the checks (:mod:`robustbench_local.checks`), the benchmark, the gates and the experiments read:
the eps grid, one boolean ``[K, N]`` robustness matrix per attack, clean correctness, the cost,
the health flags, and its renderings (a text table, a figure, JSON). It imports only the health
vocabulary, so both the evaluation and the checks import it without a cycle.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from robustbench_local.health import ADAPTIVE_SUFFIX, Flag

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


@dataclass
class Curve:
    """A robustness curve and everything needed to audit it.

    Attributes:
        eps: ``[K]`` the budgets, increasing.
        attacks: Attack labels in evaluation order (adaptive runs end in ``+adaptive``).
        robust: ``label -> bool [K, N]``: sample still classified correctly under that attack.
        clean_correct: ``bool [N]``: correct on the clean input.
        indices: ``[N]`` dataset indices of the evaluated samples.
        cost: ``label -> {"wall_time", "n_forward", "n_backward"}`` (per-sample passes).
        seed: The evaluation seed.
        norm: The threat model's norm.
        health: Check results (:class:`robustbench_local.health.Flag`).
        attack_configs: ``label -> Attack.config()``.
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
        """Labels the worst case is taken over: every attack, naive and adaptive."""
        return list(self.attacks)

    def accuracy(self, label: str) -> Tensor:
        """Robust accuracy per eps ``[K]`` under one attack."""
        if label not in self.robust:
            raise ValueError(
                f"no attack {label!r} in this curve; it has: {', '.join(self.attacks)}"
            )
        return self.robust[label].float().mean(dim=1)

    def worst_case_robust(self) -> Tensor:
        """``bool [K, N]``: robust under every attack (the per-sample worst case)."""
        out = self.clean_correct.unsqueeze(0).expand(len(self.eps), -1).clone()
        for label in self.headline_labels:
            out &= self.robust[label]
        return out

    def worst_case(self) -> Tensor:
        """Per-sample worst-case robust accuracy per eps ``[K]``."""
        return self.worst_case_robust().float().mean(dim=1)

    def total_cost(self) -> dict[str, float]:
        """Cost summed over attacks."""
        keys = ("wall_time", "n_forward", "n_backward")
        return {k: float(sum(c.get(k, 0) for c in self.cost.values())) for k in keys}

    def table(self) -> str:
        """A text table: one row per eps, one column per attack, plus the worst case."""
        cols = [*self.attacks, "worst_case"]
        width = max(10, *(len(c) for c in cols))
        head = f"{'eps':>8} " + " ".join(f"{c:>{width}}" for c in cols)
        lines = [f"clean accuracy {self.clean_accuracy:.2%} on {self.n_examples} samples", head]
        accs = [self.accuracy(a) for a in self.attacks] + [self.worst_case()]
        for k, e in enumerate(self.eps.tolist()):
            lines.append(f"{e:>8.4g} " + " ".join(f"{float(a[k]):>{width}.2%}" for a in accs))
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
        """Accuracy vs eps, one line per attack (naive dashed, adaptive solid), worst case bold.

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
            ax.plot(eps, acc, "--" if naive else "-", marker="o", ms=3, label=label)
        ax.plot(
            eps,
            [self.clean_accuracy, *self.worst_case().tolist()],
            "k-",
            lw=2.5,
            label="worst case",
        )
        ax.set(xlabel=f"eps ({self.norm})", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.set_title(title or f"Robustness curve ({self.n_examples} samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

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
            "accuracy": {k: self.accuracy(k).tolist() for k in self.attacks},
            "worst_case": self.worst_case().tolist(),
            "clean_accuracy": self.clean_accuracy,
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
        )


__all__ = ["Curve"]
