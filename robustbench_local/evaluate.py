"""Robustness curves: accuracy vs. perturbation budget, per attack and per-sample worst case.

Fixed-budget attacks (FGSM, PGD, APGD) run over the eps grid in increasing order and only on the
samples still robust at the previous eps: the balls are nested, so a sample broken at ``eps_i``
is broken at every larger eps. Minimum-norm attacks (CW) run once and are thresholded at every
eps. The data streams through in batches, so memory is bounded by the batch size; only boolean
robustness matrices are kept. A model whose forward pass is non-differentiable or random is
attacked twice, as it is (naive) and through BPDA/EOT (adaptive); the worst case takes both.

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import attacks as atk_lib
from attacks.base import parse_eps
from defenses.data import DataLike, model_device, tensors_of
from robustbench_local.checks import masking_checks, preflight
from robustbench_local.data import sample_indices
from robustbench_local.health import ADAPTIVE_SUFFIX, Flag, raise_on_errors

logger = logging.getLogger(__name__)
AttackSpec = Sequence[str | atk_lib.Attack] | Mapping[str, atk_lib.Attack | str]


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

    def plot(self, path: str | None = None, title: str | None = None) -> Any:
        """Accuracy vs eps, one line per attack (naive dashed, adaptive solid), worst case bold."""
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


def resolve_attacks(spec: AttackSpec, seed: int = 0) -> dict[str, atk_lib.Attack]:
    """Turn names, Attack instances or a ``label -> attack`` mapping into ``label -> Attack``.

    Raises:
        ValueError: An empty list, an unknown name (the registry lists the known ones), a
            duplicate label, or attacks with different norms.
    """
    items = spec.items() if isinstance(spec, Mapping) else [(None, a) for a in spec]
    out: dict[str, atk_lib.Attack] = {}
    for label, a in items:
        attack = atk_lib.create(a, seed=seed) if isinstance(a, str) else a
        if not isinstance(attack, atk_lib.Attack):
            raise TypeError(f"attacks must be names or Attack instances, got {type(a).__name__}")
        key = label or attack.name
        if key in out:
            raise ValueError(f"attack label {key!r} appears twice; pass a dict label -> attack")
        out[key] = attack
    if not out:
        raise ValueError("no attacks given: pass e.g. attacks=['fgsm', 'pgd']")
    if len({a.norm for a in out.values()}) > 1:
        raise ValueError("all attacks of one curve must share a norm; make one curve per norm")
    return out


def _validate_grid(eps: Any) -> list[float]:
    grid = parse_eps(eps)
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise ValueError(f"the eps grid must be strictly increasing, got {grid}")
    return grid


def _batches(data: DataLike, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches of the selected samples, loading one batch at a time."""
    for chunk in indices.split(batch_size):
        yield tensors_of(data, chunk)


def _evaluators(
    model: nn.Module, attacks: dict[str, atk_lib.Attack], adaptive: bool | str
) -> list[tuple[str, atk_lib.Attack, nn.Module]]:
    """``(label, attack, model to attack)`` triples, adding adaptive runs where needed."""
    if adaptive not in (True, False, "auto"):
        raise ValueError(f"adaptive must be True, False or 'auto', got {adaptive!r}")
    use = adaptive is True or (adaptive == "auto" and atk_lib.needs_adaptive(model))
    out = [(label, a, model) for label, a in attacks.items()]
    if use:
        wrapped = atk_lib.adaptive_model(model)
        out += [(f"{label}{ADAPTIVE_SUFFIX}", a, wrapped) for label, a in attacks.items()]
    return out


def robustness_curve(
    model: nn.Module,
    data: Dataset | tuple[Tensor, Tensor],
    attacks: AttackSpec,
    eps: Sequence[float] | float,
    *,
    n_examples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    adaptive: bool | str = "auto",
    checks: bool = True,
    progress: bool = True,
    check_kwargs: Mapping[str, Any] | None = None,
) -> Curve:
    """Evaluate robust accuracy over an eps grid for each attack and their worst case.

    Args:
        model: A classifier obeying the model contract (inputs in [0, 1], logits out).
        data: A dataset of ``(x, y)`` pairs or a tuple of tensors ``(x, y)``.
        attacks: Attack names, Attack instances, or a ``label -> attack`` mapping.
        eps: The budget grid, strictly increasing.
        n_examples: Evaluate a fixed seeded subset of this size (default: all samples).
        batch_size: Samples per batch; memory is bounded by it.
        seed: Seeds the sample selection, attacks built from names, and global RNGs.
        device: Where to evaluate (default: the model's device).
        adaptive: ``"auto"`` adds BPDA/EOT runs for non-differentiable or random models.
        checks: Run the preflight (before attacking) and gradient-masking checks (after).
        progress: Show a progress bar.
        check_kwargs: Extra keyword arguments for ``checks.masking_checks``.

    Returns:
        A :class:`Curve`.

    Raises:
        ValueError: Bad eps grid, ``n_examples`` larger than the data, no attacks, or a model
            that fails the preflight (e.g. it returns probabilities).
    """
    grid = _validate_grid(eps)
    attack_map = resolve_attacks(attacks, seed)
    x_all_len = len(data[0]) if isinstance(data, tuple) else len(data)
    n = x_all_len if n_examples is None else int(n_examples)
    if not 0 < n <= x_all_len:
        raise ValueError(
            f"n_examples={n_examples} but the data has {x_all_len} samples; "
            f"pass 0 < n_examples <= {x_all_len}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    indices = sample_indices(x_all_len, n, seed) if n < x_all_len else torch.arange(x_all_len)
    dev = torch.device(device) if device is not None else model_device(model)
    runs = _evaluators(model, attack_map, adaptive)
    torch.manual_seed(seed)
    robust: dict[str, list[Tensor]] = {label: [] for label, _, _ in runs}
    cost = {label: {"wall_time": 0.0, "n_forward": 0, "n_backward": 0} for label, _, _ in runs}
    clean: list[Tensor] = []
    pre_flags: list[Flag] = []
    first: tuple[Tensor, Tensor] | None = None
    n_batches = (n + batch_size - 1) // batch_size
    bar = tqdm(
        total=n_batches * len(runs), desc="robustness curve", disable=not progress, leave=False
    )
    for x, y in _batches(data, indices, batch_size):
        x, y = x.to(dev), y.to(device=dev, dtype=torch.long)
        if first is None:
            first = (x[:100], y[:100])
            if checks:
                pre_flags = _preflight(model, x, y, attack_map)
        with atk_lib.model_guard(model, eval_mode=True), torch.no_grad():
            clean.append((model(x).argmax(1) == y).cpu())
        for label, attack, target in runs:
            bar.set_postfix_str(label)
            res = attack(target, x, y, eps=grid)
            robust[label].append((~res.success).cpu())
            _add_cost(cost[label], res)
            bar.update()
    bar.close()
    curve = Curve(
        eps=torch.tensor(grid, dtype=torch.float64),
        attacks=[label for label, _, _ in runs],
        robust={k: torch.cat(v, dim=1) for k, v in robust.items()},
        clean_correct=torch.cat(clean),
        indices=indices,
        cost=cost,
        seed=seed,
        norm=next(iter(attack_map.values())).norm.value,
        attack_configs={label: a.config() for label, a, _ in runs},
    )
    curve.health = pre_flags
    if checks and first is not None:
        curve.health += masking_checks(curve, model, *first, attack_map, **dict(check_kwargs or {}))
    logger.info("robustness curve done:\n%s", curve.table())
    return curve


def _preflight(
    model: nn.Module, x: Tensor, y: Tensor, attack_map: dict[str, atk_lib.Attack]
) -> list[Flag]:
    """Run the preflight checks; raise on an error-level failure."""
    flags = preflight(model, x, y, next(iter(attack_map.values())).bounds)
    raise_on_errors(flags)
    return flags


def _add_cost(acc: dict[str, float], res: atk_lib.AttackResult) -> None:
    acc["wall_time"] += res.wall_time
    acc["n_forward"] += res.n_forward
    acc["n_backward"] += res.n_backward


__all__ = ["ADAPTIVE_SUFFIX", "Curve", "resolve_attacks", "robustness_curve"]
