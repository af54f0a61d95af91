"""Corruption robustness curves: accuracy per corruption and severity, mCE, plots.

:func:`corruption_curve` evaluates a classifier on the corruptions of a suite (MNIST-C or
CIFAR-10-C, generated on the fly by :func:`robustbench_local.corruptions.corrupt`) at each
severity, on the evaluation engine (:mod:`robustbench_local.engine`: fixed sample ids, sharded
over ranks, resumable from a state folder, progress, cost). Every random draw of a corruption
derives from (seed, sample id), so a sharded or resumed run equals a single one.

A :class:`CorruptionCurve` keeps the per-sample correctness ``bool [C, S, N]`` (corruption x
severity x sample) and clean correctness ``bool [N]``; from them come the accuracy per
corruption and severity, the mean corruption accuracy, the worst corruption, the corruption
error normalised by a baseline model's (mCE) and its relative version, a text table, a plot,
an example grid and JSON/CSV exports.

Severities are integers 1 to 5; ``None`` stands for each corruption's benchmark setting (the
single level MNIST-C uses per corruption), shown as ``bench``.

References:
    Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and
    Perturbations", ICLR 2019. https://arxiv.org/abs/1903.12261 (CIFAR-10-C, mCE, relative mCE)
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", ICML workshop 2019.
    https://arxiv.org/abs/1906.02337
"""

from __future__ import annotations

import io
import logging
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from attacks.context import model_guard
from attacks.result import Cost
from attacks.validation import check_logits
from defenses.data import DataLike, tensors_of
from defenses.storage import atomic_write_text
from robustbench_local import distributed
from robustbench_local.corruptions.api import (
    corrupt,
    corruption_info,
    corruption_names,
    fits,
    suite_for_channels,
)
from robustbench_local.corruptions.registry import SEVERITIES, SUITE_CHANNELS, SUITES
from robustbench_local.engine import (
    Batch,
    BatchOutput,
    Evaluation,
    Progress,
    run_evaluation,
    select_samples,
)
from robustbench_local.health import Flag, passed
from robustbench_local.inputs import as_eval_data, check_eval_inputs

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

Severity = int | None
"""A severity 1 to 5, or None for a corruption's benchmark setting."""
BENCHMARK_LABEL = "bench"
"""How the benchmark setting (severity None) is shown in tables, plots and CSV columns."""
CLEAN_ROW = "clean"
"""The row of the clean pass in the cost and the progress bar."""


class Worst(NamedTuple):
    """The worst corruption of a curve: its name and mean accuracy over the severities."""

    name: str
    accuracy: float


def severity_label(severity: Severity) -> str:
    """``"3"`` for severity 3, ``"bench"`` for the benchmark setting (None)."""
    return BENCHMARK_LABEL if severity is None else str(severity)


def check_severities(severities: Any) -> tuple[Severity, ...]:
    """Validate a severity list: distinct integers 1 to 5, or None (benchmark setting).

    Raises:
        ValueError: An empty list, a duplicate, or a value that is not 1 to 5 or None.
    """
    single = severities is None or isinstance(severities, numbers.Integral)
    try:
        values = tuple((severities,) if single else severities)
    except TypeError as err:
        raise ValueError(
            f"severities must be a list of integers 1 to 5, got {severities!r}"
        ) from err
    for s in values:
        integer = isinstance(s, numbers.Integral) and not isinstance(s, bool)
        if s is not None and not (integer and int(s) in SEVERITIES):
            raise ValueError(
                f"severities must be integers {SEVERITIES[0]} to {SEVERITIES[-1]} (or None for "
                f"each corruption's benchmark setting), got {s!r} in {severities!r}"
            )
    values = tuple(None if s is None else int(s) for s in values)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"severities must be a non-empty list without repeats, got {values!r}")
    return values


# --------------------------------------------------------------------------- the result


@dataclass(frozen=True, eq=False)
class CorruptionCurve:
    """Accuracy under each corruption and severity, per sample, and what it cost.

    Attributes:
        suite: The corruption suite (``"mnist_c"`` or ``"cifar10_c"``).
        corruptions: The corruption names, in evaluation order (``C`` of them).
        severities: The severities (``S``): integers 1 to 5, None for the benchmark setting.
        correct: ``bool [C, S, N]``: sample classified correctly under that corruption.
        clean_correct: ``bool [N]``: classified correctly without corruption.
        indices: ``[N]`` dataset indices of the evaluated samples.
        cost: ``row -> Cost`` (``"clean"`` and one row per corruption; this call's own work).
        seed: The evaluation seed (corruption draws derive from it and the sample ids).
        health: Health flags (e.g. ``resumed``).
    """

    suite: str
    corruptions: tuple[str, ...]
    severities: tuple[Severity, ...]
    correct: Tensor
    clean_correct: Tensor
    indices: Tensor
    cost: Mapping[str, Cost] = field(default_factory=dict)
    seed: int = 0
    health: tuple[Flag, ...] = ()

    def __post_init__(self) -> None:
        n = int(self.clean_correct.numel())
        want = (len(self.corruptions), len(self.severities), n)
        if tuple(self.correct.shape) != want or tuple(self.indices.shape) != (n,):
            raise ValueError(
                f"a corruption curve needs correct [C, S, N] = {list(want)} and indices [N]; got "
                f"{list(self.correct.shape)} and {list(self.indices.shape)}"
            )

    @property
    def n_examples(self) -> int:
        """Number of evaluated samples."""
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        """Accuracy on the clean inputs."""
        return float(self.clean_correct.double().mean())

    @property
    def accuracy_table(self) -> Tensor:
        """``float64 [C, S]``: accuracy per corruption (rows) and severity (columns)."""
        return self.correct.double().mean(dim=2)

    @property
    def mean_accuracy(self) -> float:
        """Mean corruption accuracy over every corruption and severity."""
        return float(self.accuracy_table.mean())

    def _row(self, name: str) -> int:
        if name not in self.corruptions:
            raise ValueError(
                f"no corruption {name!r} in this curve; it has: {', '.join(self.corruptions)}"
            )
        return self.corruptions.index(name)

    def accuracy(self, name: str) -> Tensor:
        """``float64 [S]``: accuracy under corruption ``name`` at each severity.

        Raises:
            ValueError: ``name`` is not in the curve (its corruptions are listed).
        """
        return self.accuracy_table[self._row(name)]

    def corruption_accuracy(self) -> dict[str, float]:
        """``name -> accuracy`` averaged over the severities."""
        means = self.accuracy_table.mean(dim=1).tolist()
        return dict(zip(self.corruptions, means, strict=True))

    def worst(self) -> Worst:
        """The corruption with the lowest accuracy averaged over the severities."""
        name, acc = min(self.corruption_accuracy().items(), key=lambda kv: kv[1])
        return Worst(name, acc)

    def total_cost(self) -> Cost:
        """The cost summed over the rows."""
        return sum(self.cost.values(), Cost())

    # ---- normalised errors (Hendrycks & Dietterich 2019)

    def corruption_errors(
        self, baseline: CorruptionCurve, *, relative: bool = False
    ) -> dict[str, float]:
        """``name -> CE_c``: this model's corruption error normalised by ``baseline``'s.

        ``CE_c = sum_s E_{s,c} / sum_s E^base_{s,c}`` with ``E = 1 - accuracy``; relative:
        ``sum_s (E_{s,c} - E_clean) / sum_s (E^base_{s,c} - E^base_clean)`` (the degradation
        from clean, normalised by the baseline's). 1.0 means "as bad as the baseline".

        Raises:
            ValueError: The curves have other suites, corruptions or severities, or the
                baseline's denominator is not positive for some corruption (no error, or no
                degradation for the relative version): the ratio is then undefined.
        """
        base = self._aligned(baseline)
        err, base_err = 1.0 - self.accuracy_table, 1.0 - base
        if relative:
            err = err - (1.0 - self.clean_accuracy)
            base_err = base_err - (1.0 - baseline.clean_accuracy)
        num, den = err.sum(dim=1), base_err.sum(dim=1)
        bad = [c for c, d in zip(self.corruptions, den.tolist(), strict=True) if d <= 0]
        if bad:
            what = "degrades" if relative else "errs"
            raise ValueError(
                f"the baseline never {what} under {', '.join(bad)}, so its normalised error "
                "is undefined there; choose a weaker baseline, more samples, or leave those "
                "corruptions out of both curves"
            )
        return dict(zip(self.corruptions, (num / den).tolist(), strict=True))

    def mce(self, baseline: CorruptionCurve) -> float:
        """Mean corruption error normalised by ``baseline`` (1.0: as bad as the baseline).

        Hendrycks & Dietterich report it in percent against AlexNet (mCE 100% for AlexNet).

        Raises:
            ValueError: See :meth:`corruption_errors`.
        """
        errors = self.corruption_errors(baseline)
        return float(sum(errors.values()) / len(errors))

    def relative_mce(self, baseline: CorruptionCurve) -> float:
        """Relative mCE: the degradation from clean error, normalised by the baseline's.

        Raises:
            ValueError: See :meth:`corruption_errors`.
        """
        errors = self.corruption_errors(baseline, relative=True)
        return float(sum(errors.values()) / len(errors))

    def _aligned(self, baseline: CorruptionCurve) -> Tensor:
        """``baseline``'s accuracy table in this curve's row and column order.

        Raises:
            TypeError: ``baseline`` is not a :class:`CorruptionCurve`.
            ValueError: Another suite, set of corruptions or set of severities.
        """
        if not isinstance(baseline, CorruptionCurve):
            raise TypeError(f"baseline must be a CorruptionCurve, got {type(baseline).__name__}")
        problems = []
        if baseline.suite != self.suite:
            problems.append(f"suite {baseline.suite!r} vs {self.suite!r}")
        if set(baseline.corruptions) != set(self.corruptions):
            ours, theirs = set(self.corruptions), set(baseline.corruptions)
            problems.append(
                f"corruptions only here: {sorted(ours - theirs)}, only in the baseline: "
                f"{sorted(theirs - ours)}"
            )
        if set(baseline.severities) != set(self.severities):
            problems.append(f"severities {list(baseline.severities)} vs {list(self.severities)}")
        if problems:
            raise ValueError(
                "the baseline curve is not comparable: " + "; ".join(problems) + ". Evaluate "
                "both models with the same suite, corruptions and severities"
            )
        rows = [baseline.corruptions.index(c) for c in self.corruptions]
        cols = [baseline.severities.index(s) for s in self.severities]
        return baseline.accuracy_table[rows][:, cols]

    # ---- renderings

    def table(self) -> str:
        """A text table: one row per corruption, one column per severity, plus the mean."""
        cols = [severity_label(s) for s in self.severities] + ["mean"]
        width = max(12, *(len(c) for c in self.corruptions))
        head = f"{'corruption':<{width}} " + " ".join(f"{c:>7}" for c in cols)
        lines = [
            f"{self.suite}: clean accuracy {self.clean_accuracy:.2%} on {self.n_examples} "
            f"samples (seed {self.seed})",
            head,
        ]
        for name, row in zip(self.corruptions, self.accuracy_table.tolist(), strict=True):
            cells = [*row, sum(row) / len(row)]
            lines.append(f"{name:<{width}} " + " ".join(f"{v:>7.2%}" for v in cells))
        per_severity = self.accuracy_table.mean(dim=0).tolist()
        cells = [*per_severity, self.mean_accuracy]
        lines.append(f"{'mean':<{width}} " + " ".join(f"{v:>7.2%}" for v in cells))
        worst = self.worst()
        lines.append(f"worst corruption: {worst.name} ({worst.accuracy:.2%})")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str] | None = None, title: str | None = None) -> Figure:
        """Accuracy vs severity, one line per corruption; clean accuracy as a reference line.

        Args:
            path: Also save the figure here (format from the suffix).
            title: Figure title (default: the suite and sample count).

        Returns:
            The matplotlib figure (not attached to pyplot, so nothing is shown).
        """
        from matplotlib import colormaps
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.5), dpi=120)
        ax = fig.add_subplot()
        xs = list(range(len(self.severities)))
        colors = colormaps["tab20"]
        for k, name in enumerate(self.corruptions):
            acc = self.accuracy(name).tolist()
            ax.plot(xs, acc, "-", marker="o", ms=3, lw=1, color=colors(k % 20), label=name)
        mean = self.accuracy_table.mean(dim=0).tolist()
        ax.plot(xs, mean, "k-", lw=2.5, label="mean")
        ax.axhline(self.clean_accuracy, color="k", ls="--", lw=1.2, label="clean")
        ax.set_xticks(xs, [severity_label(s) for s in self.severities])
        ax.set(xlabel="severity", ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.set_title(title or f"{self.suite} ({self.n_examples} samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2, loc="lower left")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def example_grid(
        self,
        x: Tensor,
        path: str | os.PathLike[str] | None = None,
        *,
        sample_id: int = 0,
        title: str | None = None,
    ) -> Figure:
        """One image per corruption (rows) and severity (columns), the clean image first.

        The image is corrupted exactly as in the evaluation of the sample ``sample_id`` (same
        suite, seed and id).

        Args:
            x: One image ``[C, H, W]`` in [0, 1], or a batch ``[N, C, H, W]`` (its first image).
            path: Also save the figure here.
            sample_id: The dataset index the image's random draws derive from.
            title: Figure title.

        Returns:
            The matplotlib figure (not attached to pyplot).

        Raises:
            ValueError: ``x`` is not an image or a batch of images.
        """
        from matplotlib.figure import Figure

        image = _one_image(x)
        ids = torch.tensor([int(sample_id)], device=image.device)
        rows, cols = len(self.corruptions), len(self.severities) + 1
        fig = Figure(figsize=(1.2 * cols, 1.2 * rows + 0.4), dpi=100)
        axes = fig.subplots(rows, cols, squeeze=False)
        for r, name in enumerate(self.corruptions):
            views = [image] + [
                corrupt(image, name, s, suite=self.suite, seed=self.seed, ids=ids)
                for s in self.severities
            ]
            for c, view in enumerate(views):
                _show(axes[r][c], view[0])
            axes[r][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
        for c, label in enumerate(["clean", *(severity_label(s) for s in self.severities)]):
            axes[0][c].set_title(label, fontsize=8)
        fig.suptitle(title or f"{self.suite} examples (sample {sample_id})", fontsize=9)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def per_sample_csv(self) -> str:
        """One row per sample: index, clean_correct, and ``name@severity`` (1 = correct)."""
        buf = io.StringIO()
        labels = [severity_label(s) for s in self.severities]
        cols = [f"{name}@{s}" for name in self.corruptions for s in labels]
        buf.write(",".join(["index", "clean_correct", *cols]) + "\n")
        flat = self.correct.reshape(-1, self.n_examples).int().t().tolist()  # [N, C*S]
        clean = self.clean_correct.int().tolist()
        for idx, ok, row in zip(self.indices.tolist(), clean, flat, strict=True):
            buf.write(",".join(str(v) for v in (idx, ok, *row)) + "\n")
        return buf.getvalue()

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`per_sample_csv` to ``path`` atomically; return the path."""
        return atomic_write_text(path, self.per_sample_csv())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (correctness as lists of 0/1, summaries included)."""
        worst = self.worst()
        return {
            "suite": self.suite,
            "corruptions": list(self.corruptions),
            "severities": list(self.severities),
            "correct": self.correct.int().tolist(),
            "clean_correct": self.clean_correct.int().tolist(),
            "indices": self.indices.tolist(),
            "cost": {k: Cost.of(v).to_dict() for k, v in self.cost.items()},
            "seed": self.seed,
            "health": [h.to_dict() for h in self.health],
            "accuracy": {c: self.accuracy(c).tolist() for c in self.corruptions},
            "clean_accuracy": self.clean_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "worst": {"name": worst.name, "accuracy": worst.accuracy},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CorruptionCurve:
        """Rebuild a curve from :meth:`to_dict` output."""
        return cls(
            suite=str(d["suite"]),
            corruptions=tuple(str(c) for c in d["corruptions"]),
            severities=check_severities(d["severities"]),
            correct=torch.tensor(d["correct"], dtype=torch.bool),
            clean_correct=torch.tensor(d["clean_correct"], dtype=torch.bool),
            indices=torch.tensor(d["indices"], dtype=torch.long),
            cost={k: Cost.of(v) for k, v in (d.get("cost") or {}).items()},
            seed=int(d.get("seed", 0)),
            health=tuple(Flag.from_dict(h) for h in d.get("health", [])),
        )


def _one_image(x: Tensor) -> Tensor:
    """``[1, C, H, W]`` from an image ``[C, H, W]`` or the first of a batch ``[N, C, H, W]``."""
    if not isinstance(x, Tensor) or x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[0] == 0):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"example_grid needs an image [C, H, W] or images [N, C, H, W], got {shape}"
        )
    return (x.unsqueeze(0) if x.dim() == 3 else x[:1]).float()


def _show(ax: Any, image: Tensor) -> None:
    """Draw one ``[C, H, W]`` image in [0, 1] on ``ax`` (gray or color), without ticks."""
    pixels = image.detach().cpu().clamp(0, 1)
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(pixels.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------- the evaluation


class CorruptionEvaluation(Evaluation):
    """The engine kind of :func:`corruption_curve`: clean and corrupted accuracy per batch.

    Rows: ``"clean"`` and one per corruption (all its severities). Per batch it returns
    ``correct`` ``bool [C, S, n]`` and ``clean_correct`` ``bool [n]``; the model runs in eval
    mode without gradients and is left as it came.
    """

    kind = "corruptions"

    def __init__(
        self, suite: str, corruptions: Sequence[str], severities: Sequence[Severity]
    ) -> None:
        self.suite = str(suite)
        self.corruptions = tuple(corruptions)
        self.severities = check_severities(severities)

    def rows(self) -> list[str]:
        """``"clean"`` then the corruption names."""
        return [CLEAN_ROW, *self.corruptions]

    def config(self) -> dict[str, Any]:
        """Suite, corruptions and severities: what the per-sample results depend on."""
        return {
            "suite": self.suite,
            "corruptions": list(self.corruptions),
            "severities": list(self.severities),
        }

    def sample_shapes(self, n: int) -> dict[str, tuple[int, ...]]:
        """``correct [C, S, n]`` and ``clean_correct [n]``."""
        return {
            "correct": (len(self.corruptions), len(self.severities), n),
            "clean_correct": (n,),
        }

    def evaluate(self, model: nn.Module, batch: Batch, progress: Progress) -> BatchOutput:
        """Clean correctness, then every corruption at every severity, on one batch."""
        n = batch.x.shape[0]
        correct = torch.zeros(len(self.corruptions), len(self.severities), n, dtype=torch.bool)
        cost: dict[str, Cost] = {}
        with model_guard(model, eval_mode=True), torch.no_grad():
            with progress.row(CLEAN_ROW):
                start = time.perf_counter()
                logits = model(batch.x)
                check_logits(logits, n, [batch.y])
                clean = (logits.argmax(1) == batch.y).cpu()
                cost[CLEAN_ROW] = Cost(time.perf_counter() - start, n, 0)
            for c, name in enumerate(self.corruptions):
                with progress.row(name):
                    start = time.perf_counter()
                    for s, severity in enumerate(self.severities):
                        xc = corrupt(
                            batch.x,
                            name,
                            severity,
                            suite=self.suite,
                            seed=batch.seed,
                            ids=batch.ids,
                        )
                        correct[c, s] = (model(xc).argmax(1) == batch.y).cpu()
                    cost[name] = Cost(time.perf_counter() - start, n * len(self.severities), 0)
        return BatchOutput({"correct": correct, "clean_correct": clean}, cost)


def corruption_curve(
    model: nn.Module,
    data: DataLike,
    corruptions: str | Sequence[str] = "auto",
    severities: Sequence[Severity] | Severity = (1, 2, 3, 4, 5),
    *,
    suite: str = "auto",
    n_examples: int | None = None,
    batch_size: int = 500,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> CorruptionCurve:
    """Accuracy of ``model`` under common corruptions, per corruption and severity.

    Args:
        model: A classifier obeying the model contract (inputs in [0, 1], logits out).
        data: A dataset of ``(x, y)`` image pairs or a tuple of tensors ``(x, y)``, images
            ``[C, H, W]`` in [0, 1].
        corruptions: ``"auto"`` (the suite's benchmark corruptions that fit the images:
            CIFAR-10-C's four held-out ones are left out, as in its benchmark mean) or a list
            of names of the suite.
        severities: Integers 1 to 5; None means each corruption's benchmark setting.
        suite: ``"mnist_c"``, ``"cifar10_c"`` or ``"auto"`` (MNIST-C for one channel,
            CIFAR-10-C for three).
        n_examples: Evaluate a fixed seeded subset of this size (default: all samples).
        batch_size: Samples per batch; memory is bounded by it.
        seed: Seeds the sample selection and every corruption's draws (with the sample ids).
        device: Where to evaluate (default: the model's device).
        state_dir: Persist every finished batch here; the same call after a kill skips them.
        progress: Show a progress bar.

    Under ``torchrun`` every rank evaluates a contiguous slice of the samples and every rank
    returns the same curve (costs summed over the ranks).

    Returns:
        A :class:`CorruptionCurve`.

    Raises:
        ValueError: Unknown corruption names (the known ones are listed), severities outside
            1 to 5, data that do not fit the suite (channels, image size, values outside
            [0, 1]), ``n_examples`` larger than the data, or a ``state_dir`` of another
            evaluation.
    """
    levels = check_severities(severities)
    data = as_eval_data(data)  # numpy arrays as tensors; the suite's own checks come first
    indices = select_samples(data, n_examples, seed)
    first = _first_image(data, indices)
    suite_name, names = resolve_corruptions(corruptions, suite, first)
    _probe(first, suite_name, names, levels, seed, int(indices[0]))
    check_eval_inputs(model, data, 0.0)  # then every entry point's checks (no budget here)
    evaluation = CorruptionEvaluation(suite_name, names, levels)
    run = run_evaluation(
        evaluation, model, data, indices=indices, batch_size=batch_size, seed=seed,
        device=device, state_dir=state_dir, progress=progress, desc="corruption curve",
    )  # fmt: skip
    curve = CorruptionCurve(
        suite=suite_name,
        corruptions=tuple(names),
        severities=levels,
        correct=run.samples["correct"].bool(),
        clean_correct=run.samples["clean_correct"].bool(),
        indices=run.indices,
        cost=dict(run.cost),
        seed=seed,
        health=(*run.flags, notes_flag(suite_name, names)),
    )
    if distributed.world().is_main:
        logger.info("corruption curve done:\n%s", curve.table())
    return curve


def notes_flag(suite: str, names: Sequence[str]) -> Flag:
    """An info flag: how the evaluated corruptions depart from their reference code, if they do.

    The notes come from the corruption registry (``corruption_info(name, suite)["note"]``).
    """
    notes = {c: corruption_info(c, suite)["note"] for c in names}
    notes = {c: n for c, n in notes.items() if n}
    text = "; ".join(f"{c}: {n}" for c, n in notes.items()) or "none"
    return passed(
        "corruption_notes",
        f"{len(notes)} of {len(names)} {suite} corruptions carry a note on their reference "
        f"code ({text})",
        notes=notes,
    )


def _first_image(data: DataLike, indices: Tensor) -> Tensor:
    """The first sample's image ``[1, C, H, W]``.

    Raises:
        ValueError: The samples are not images ``[C, H, W]`` of floats.
    """
    x, _ = tensors_of(data, indices[:1])
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"corruptions need float images [C, H, W] in [0, 1] per sample, got samples of shape "
            f"{list(x.shape[1:])} and dtype {x.dtype}; reshape flat inputs to images (e.g. "
            "[1, 28, 28]) and scale uint8 pixels by 1/255"
        )
    return x


def resolve_corruptions(
    corruptions: str | Sequence[str], suite: str, x: Tensor
) -> tuple[str, tuple[str, ...]]:
    """The suite and corruption names an evaluation of images like ``x`` runs.

    ``"auto"`` takes the suite's benchmark corruptions (CIFAR-10-C's four held-out ones, meant
    for validation, are left out as in the benchmark's mean; name them to include them) that
    fit the images; those that need larger images are skipped with a warning.

    Args:
        corruptions: ``"auto"`` or names of the suite.
        suite: A suite name or ``"auto"`` (from the channels of ``x``).
        x: A sample batch ``[n, C, H, W]``.

    Returns:
        ``(suite, names)``.

    Raises:
        ValueError: No suite fits the channels, unknown names (the known ones listed, the
            closest named), an empty or repeated list, or no corruption fits the images.
    """
    name = _suite(suite, int(x.shape[1]))
    if isinstance(corruptions, str) and corruptions == "auto":
        return name, _auto(name, x)
    chosen = (corruptions,) if isinstance(corruptions, str) else tuple(corruptions)
    names = tuple(corruption_info(c, name)["corruption"] for c in chosen)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"corruptions must be 'auto' or distinct names, got {list(chosen)}")
    return name, names


def _suite(suite: str, channels: int) -> str:
    """``suite`` checked against the images' channels; for ``"auto"`` the suite that fits.

    Raises:
        ValueError: An unknown suite, or one for images of another channel count.
    """
    if suite == "auto":
        return suite_for_channels(channels)
    if suite not in SUITES:
        raise ValueError(f"suite={suite!r}; use 'auto' or one of: {', '.join(SUITES)}")
    want = SUITE_CHANNELS[suite]
    if channels != want:
        raise ValueError(
            f"suite {suite!r} corrupts {want}-channel images, got {channels}-channel images; "
            "pass suite='auto' or images that fit the suite"
        )
    return suite


def _auto(suite: str, x: Tensor) -> tuple[str, ...]:
    """The benchmark corruptions of ``suite`` that fit images like ``x``.

    Raises:
        ValueError: None fits (e.g. images smaller than every corruption needs).
    """
    bench = [c for c in corruption_names(suite) if not corruption_info(c, suite)["held_out"]]
    names = tuple(c for c in bench if fits(c, suite, x))
    skipped = [c for c in bench if c not in names]
    if not names:
        size = "x".join(str(int(v)) for v in x.shape[-2:])
        raise ValueError(
            f"no {suite} corruption fits images of {list(x.shape[1:])} ({size} pixels); "
            "upsample the images to at least 28 pixels a side (e.g. F.interpolate(x, size=28))"
        )
    if skipped:
        logger.warning("corruptions skipped (images too small for them): %s", ", ".join(skipped))
    return names


def _probe(
    x: Tensor, suite: str, names: Sequence[str], levels: Sequence[Severity], seed: int, sid: int
) -> None:
    """Corrupt the first image with every setting, so bad data fail before the evaluation.

    Raises:
        ValueError: What :func:`~robustbench_local.corruptions.corrupt` says about the data
            (image too small, values outside [0, 1], channels that do not fit).
    """
    ids = torch.tensor([sid])
    for name in names:
        for severity in levels:
            corrupt(x, name, severity, suite=suite, seed=seed, ids=ids)


__all__ = [
    "BENCHMARK_LABEL",
    "CorruptionCurve",
    "CorruptionEvaluation",
    "Severity",
    "Worst",
    "check_severities",
    "corruption_curve",
    "notes_flag",
    "resolve_corruptions",
    "severity_label",
]
