"""The certified curve: per-eps, per-sample certificates of one method, and what they cost.

A :class:`CertifiedCurve` is what :func:`robustbench_local.certify.certify` returns: the radius
grid, the ``bool [K, N]`` certified matrix (nested in eps, implying clean correctness), the
per-sample certified radius, the method and its settings, what it certifies (the model, or the
smoothed classifier for randomized smoothing), the cost and the health flags; and its
renderings: a text table, a figure, JSON and a per-sample CSV. Built once from the engine's
run, never changed afterwards.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attacks.result import Cost
from robustbench_local.health import Flag

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class CertifiedCurve:
    """Certified accuracy over a radius grid, with everything needed to audit it.

    Attributes:
        eps: ``[K]`` the radii, increasing.
        norm: The ball's norm (``"linf"`` or ``"l2"``).
        method: The certification method (``"ibp"``, ``"crown"``, ``"milp"``, ``"smoothing"``).
        settings: The certifier's configuration (method, norm, bounds and its own settings).
        certified: ``bool [K, N]``: certified at each eps (nested; implies ``clean_correct``).
        clean_correct: ``bool [N]``: the certified classifier is right on the clean input.
        radius: ``float [N]``: the certified radius (bound methods: the largest grid eps
            certified; smoothing: its own radius), 0 where none.
        indices: ``[N]`` dataset indices of the samples.
        cost: Wall time and passes of this call's own work (resumed batches excluded).
        seed: The evaluation seed.
        certifies: ``"the model"`` or ``"the smoothed classifier"``.
        health: Flags of the run (``resumed``) and of the method (undecided samples...).
        extra: Method-specific per-sample tensors (last dimension ``N``), e.g. MILP outcomes.
    """

    eps: Tensor
    norm: str
    method: str
    settings: dict[str, Any]
    certified: Tensor
    clean_correct: Tensor
    radius: Tensor
    indices: Tensor
    cost: Cost = field(default_factory=Cost)
    seed: int = 0
    certifies: str = "the model"
    health: tuple[Flag, ...] = ()
    extra: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        """Number of evaluated samples."""
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        """Accuracy of the certified classifier on clean inputs."""
        return float(self.clean_correct.float().mean()) if self.n_examples else math.nan

    @property
    def accuracy(self) -> Tensor:
        """Certified accuracy per eps ``[K]``."""
        return self.certified.float().mean(dim=1)

    @property
    def label(self) -> str:
        """The row label beside an empirical curve: ``"certified (crown)"``."""
        return f"certified ({self.method})"

    def table(self) -> str:
        """A text table: one line per eps with the certified accuracy and count."""
        lines = [
            f"{self.label}, {self.norm}: certifies {self.certifies}; clean accuracy "
            f"{self.clean_accuracy:.2%} on {self.n_examples} samples",
            f"{'eps':>8} {'certified':>10} {'count':>7}",
        ]
        for k, e in enumerate(self.eps.tolist()):
            count = int(self.certified[k].sum())
            lines.append(f"{e:>8.4g} {float(self.accuracy[k]):>10.2%} {count:>7}")
        own = {k: v for k, v in self.settings.items() if k not in ("method", "norm")}
        if own:
            lines.append("settings: " + ", ".join(f"{k}={v}" for k, v in own.items()))
        lines += [str(f) for f in self.health if not f.ok]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
        """Certified accuracy vs eps (a step line from the clean accuracy at eps 0).

        Args:
            path: Also save the figure here (format from the suffix).
            title: Figure title (default: method and sample count).

        Returns:
            The matplotlib figure (not attached to pyplot, so nothing is shown).
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), dpi=120)
        ax = fig.add_subplot()
        eps = [0.0, *self.eps.tolist()]
        acc = [self.clean_accuracy, *self.accuracy.tolist()]
        # Between two grid radii only the larger one's certificates are known to hold: each
        # step takes the value at its right end (steps-pre), never overstating.
        ax.plot(eps, acc, "-", marker="o", ms=3, drawstyle="steps-pre", label=self.label)
        ax.set(xlabel=f"eps ({self.norm})", ylabel="certified accuracy", ylim=(-0.02, 1.02))
        ax.set_title(title or f"{self.label} of {self.certifies} ({self.n_examples} samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (matrices as nested lists, NaN as None)."""
        return {
            "eps": self.eps.tolist(),
            "norm": self.norm,
            "method": self.method,
            "settings": dict(self.settings),
            "certified": self.certified.int().tolist(),
            "clean_correct": self.clean_correct.int().tolist(),
            "radius": self.radius.tolist(),
            "indices": self.indices.tolist(),
            "cost": self.cost.to_dict(),
            "seed": self.seed,
            "certifies": self.certifies,
            "health": [f.to_dict() for f in self.health],
            "extra": {k: _plain(v) for k, v in self.extra.items()},
            "accuracy": self.accuracy.tolist(),
            "clean_accuracy": self.clean_accuracy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CertifiedCurve:
        """Rebuild a curve from :meth:`to_dict` output."""
        return cls(
            eps=torch.tensor(d["eps"], dtype=torch.float64),
            norm=str(d["norm"]),
            method=str(d["method"]),
            settings=dict(d.get("settings") or {}),
            certified=torch.tensor(d["certified"], dtype=torch.bool).reshape(len(d["eps"]), -1),
            clean_correct=torch.tensor(d["clean_correct"], dtype=torch.bool),
            radius=torch.tensor(d["radius"], dtype=torch.float32),
            indices=torch.tensor(d["indices"], dtype=torch.long),
            cost=Cost.of(d.get("cost") or {}),
            seed=int(d.get("seed", 0)),
            certifies=str(d.get("certifies", "the model")),
            health=tuple(Flag.from_dict(f) for f in d.get("health", [])),
            extra={k: _tensor(v) for k, v in (d.get("extra") or {}).items()},
        )

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write one row per sample.

        Columns: index, clean correctness, radius, certified per eps, and the extras with one
        value per sample or per eps (e.g. the MILP outcome and time at each eps).
        """
        cols: dict[str, list[Any]] = {
            "index": self.indices.tolist(),
            "clean_correct": self.clean_correct.int().tolist(),
            "radius": _cells(self.radius),
        }
        for k, e in enumerate(self.eps.tolist()):
            cols[f"certified@{e:g}"] = self.certified[k].int().tolist()
        for name, t in self.extra.items():
            cols.update(_extra_columns(name, t, self.eps.tolist()))
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            writer.writerows(zip(*cols.values(), strict=True))


def _extra_columns(name: str, t: Tensor, eps: list[float]) -> dict[str, list[Any]]:
    """CSV columns of an extra: ``[N]`` one column, ``[K, N]`` one per eps, wider ones none."""
    if t.dim() == 1:
        return {name: _cells(t)}
    if t.dim() == 2 and t.shape[0] == len(eps):
        return {f"{name}@{e:g}": _cells(t[k]) for k, e in enumerate(eps)}
    return {}


def _cells(t: Tensor) -> list[Any]:
    """CSV cells: integers as they are, floats with 7 significant digits."""
    if t.is_floating_point():
        return [f"{v:.7g}" for v in t.tolist()]
    return t.int().tolist() if t.dtype == torch.bool else t.tolist()


def _plain(t: Tensor) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and values (NaN as None)."""
    values = t.flatten().tolist()
    if t.is_floating_point():
        values = [None if math.isnan(v) else v for v in values]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "values": values}


def _tensor(d: Mapping[str, Any]) -> Tensor:
    """Inverse of :func:`_plain`."""
    dtype = getattr(torch, str(d["dtype"]))
    values = [math.nan if v is None else v for v in d["values"]]
    return torch.tensor(values, dtype=dtype).reshape(d["shape"])


__all__ = ["CertifiedCurve"]
