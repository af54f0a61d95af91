"""The preflight: checks on the model and the data that run before any attack.

:func:`preflight` catches what makes an evaluation meaningless or unreliable: inputs outside the
bounds, probabilities instead of logits, labels that are not class indices, a model left in
training mode, outputs that change between two identical forward passes or with the batch
size. Each check is a public function (``check_logits(out)``, ...) and is registered once in
:data:`robustbench_local.checks.registry.CHECKS`; :func:`preflight` runs every check of kind
``"preflight"`` on one :class:`Probe` (the model, the data and one forward pass).

Example:
    >>> flags = preflight(model, x, y, bounds=(0.0, 1.0))
    >>> [f.name for f in flags if not f.ok]
    []

References:
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from attacks.validation import diagnose_range, label_problem, looks_like_probabilities
from robustbench_local.checks.registry import CHECKS, check_names, register_check
from robustbench_local.health import Flag, failed, passed
from robustbench_local.models.wrap import inputs_fix, output_problem

logger = logging.getLogger(__name__)

_MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)
_PREFLIGHT_SAMPLES = 128


@contextlib.contextmanager
def _frozen_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer afterwards (a train-mode BatchNorm forward updates its statistics)."""
    saved = (
        [(b, b.detach().clone()) for b in model.buffers()] if isinstance(model, nn.Module) else []
    )
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def _forward(model: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def _is_random(model: nn.Module) -> bool:
    return bool(getattr(model, "random", False))


@dataclass(frozen=True)
class Probe:
    """What every preflight check reads: the model, the data and one forward pass.

    Attributes:
        model: The model, used as given (its training mode is not changed).
        x: ``[N, ...]`` every input (the bounds are checked on all of them).
        xs: The first 128 inputs, the ones forwarded.
        ys: Their labels.
        out: The model's output on ``xs`` (logits, or whatever else the model returns).
        bounds: The valid input range of the attacks.
    """

    model: nn.Module
    x: Tensor
    xs: Tensor
    ys: Tensor
    out: Any
    bounds: tuple[float, float]


def preflight(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> list[Flag]:
    """Check that a model and data can be meaningfully attacked, before any attack runs.

    The model is used as given (its training mode is not changed) and left exactly as it came:
    buffers such as BatchNorm running statistics are restored.

    Args:
        model: The classifier to evaluate.
        x: ``[N, ...]`` inputs (at most 128 are forwarded).
        y: ``[N]`` integer labels.
        bounds: The valid input range of the attacks.

    Returns:
        Flags named ``inputs_in_bounds``, ``labels_in_range``, ``logits_not_probabilities``,
        ``eval_mode``, ``deterministic`` and ``batch_size_invariance``. Error severity means the
        evaluation would be meaningless (``robustness_curve`` raises a ValueError on them).

    Raises:
        TypeError: ``x`` or ``y`` is not a tensor, or ``model`` is not callable.

    References:
        Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("preflight needs tensors x [N, ...] and y [N]")
    if not callable(model):
        raise TypeError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    xs, ys = x[:_PREFLIGHT_SAMPLES], y[:_PREFLIGHT_SAMPLES]
    with _frozen_buffers(model):
        probe = Probe(model, x, xs, ys, _forward(model, xs), bounds)
        flags = [CHECKS.get(name)(probe) for name in check_names("preflight")]
    for f in flags:
        if not f.ok:
            logger.log(logging.ERROR if f.severity == "error" else logging.WARNING, "%s", f)
    return flags


def check_inputs_in_bounds(x: Tensor, bounds: tuple[float, float]) -> Flag:
    """Error unless every input is finite and inside ``bounds``."""
    name = "inputs_in_bounds"
    lo, hi = (float(b) for b in bounds)
    if not x.is_floating_point():
        return failed(
            name,
            "error",
            f"inputs have dtype {x.dtype}, not float",
            f"convert to float in [{lo}, {hi}] (e.g. divide uint8 images by 255)",
        )
    if not bool(torch.isfinite(x).all()):
        return failed(name, "error", "inputs contain NaN or inf", "clean the data")
    found = diagnose_range(x, (lo, hi))
    if found is not None:
        return failed(
            name,
            "error",
            f"the inputs have {found.problem()}",
            inputs_fix(found),
            min=found.x_min,
            max=found.x_max,
            looks_like=found.kind,
        )
    x_min, x_max = float(x.min()), float(x.max())
    return passed(name, f"inputs lie in [{x_min:.4g}, {x_max:.4g}] within [{lo}, {hi}]")


def check_logits(out: Any) -> Flag:
    """Error if the outputs are not finite ``[N, C]`` scores or look like probabilities.

    A dict, tuple, dataclass or HuggingFace-style output is named with the ``wrap_model`` call
    that extracts its logits.
    """
    name = "logits_not_probabilities"
    wrap = output_problem(out)
    if wrap is not None:
        return failed(name, "error", f"{wrap[0]}, not a tensor of logits [N, C]", wrap[1])
    if out.dim() != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return failed(
            name, "error", f"the model returns {shape}, not logits [N, C]", "return class logits"
        )
    if not bool(torch.isfinite(out).all()):
        return failed(
            name, "error", "the model returns NaN or inf", "check the weights and preprocessing"
        )
    rows = out.sum(dim=1)
    if looks_like_probabilities(out):
        return failed(
            name,
            "error",
            "the outputs are non-negative and sum to 1 per row: they are probabilities",
            "return logits (remove the final softmax); attacks on probabilities saturate and "
            "overstate robustness",
        )
    if bool((out <= 0).all()) and torch.allclose(
        out.logsumexp(dim=1), torch.zeros_like(rows), atol=1e-3
    ):
        return passed(name, "the outputs are log-probabilities (fine for attacks)")
    if bool(((out >= 0) & (out <= 1)).all()) and out.shape[0] > 1:
        return failed(
            name,
            "warning",
            "every output lies in [0, 1]: they may be sigmoid scores, which saturate",
            "return raw logits (remove the final sigmoid)",
        )
    return passed(name, "the outputs are unnormalised logits")


def check_labels(out: Any, y: Tensor) -> Flag:
    """Error if a label is not a class index of the model's output."""
    name = "labels_in_range"
    problem = label_problem(y, y.shape[0] if y.dim() else None, "labels")
    if problem is not None or y.dim() != 1:
        return failed(
            name,
            "error",
            f"labels have dtype {y.dtype}, shape {tuple(y.shape)}",
            problem or "pass int [N]",
        )
    if not (isinstance(out, Tensor) and out.dim() == 2):
        return passed(
            name, "labels are integers (the range is checked once the model returns logits)"
        )
    c = out.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        return failed(
            name,
            "error",
            f"labels span [{int(y.min())}, {int(y.max())}] but the model has {c} outputs",
            "check the dataset matches the model's number of classes",
        )
    return passed(name, f"labels are valid class indices of {c} classes")


def check_eval_mode(model: nn.Module) -> Flag:
    """Warn if the model is in training mode with Dropout (p > 0) or BatchNorm layers."""
    name = "eval_mode"
    if not isinstance(model, nn.Module) or not model.training:
        return passed(name, "the model is in eval mode")
    layers = sorted({type(m).__name__ for m in model.modules() if _acts_by_mode(m)})
    if not layers:
        return failed(
            name,
            "info",
            "the model is in training mode (harmless: it has no Dropout or BatchNorm)",
            "call model.eval() before evaluating",
        )
    return failed(
        name,
        "warning",
        f"the model is in training mode with {', '.join(layers)} layers: clean predictions "
        "are random or depend on the batch",
        "call model.eval() before evaluating (attacks run in eval mode, the clean pass does not)",
        layers=layers,
    )


def _acts_by_mode(m: nn.Module) -> bool:
    """Whether ``m`` behaves differently in training mode (a Dropout with p=0 does not)."""
    if not m.training or not isinstance(m, _MODE_DEPENDENT):
        return False
    return not (isinstance(m, nn.modules.dropout._DropoutNd) and m.p == 0)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _tolerance(out: Tensor) -> float:
    return 1e-4 * max(1.0, float(out.abs().max()))


def check_deterministic(model: nn.Module, x: Tensor, out: Tensor | None = None) -> Flag:
    """Warn if two forward passes on the same input disagree (undeclared randomness)."""
    name = "deterministic"
    out = _forward(model, x) if out is None else out
    if not isinstance(out, Tensor):
        return passed(name, "skipped: the model does not return a tensor of logits")
    diff = _max_diff(out, _forward(model, x))
    if diff <= _tolerance(out):
        return passed(name, "two forward passes agree", max_diff=diff)
    if _is_random(model):
        return passed(
            name,
            "the outputs are random, as the model declares (random=True): adaptive runs use EOT",
            max_diff=diff,
        )
    return failed(
        name,
        "warning",
        f"two forward passes on the same input differ (max logit difference {diff:.3g})",
        "call model.eval(); if the randomness is a defense, declare it (model.random = True) "
        "so the evaluation adds an EOT attack",
        max_diff=diff,
    )


def check_batch_size_invariance(model: nn.Module, x: Tensor, out: Tensor | None = None) -> Flag:
    """Warn if the outputs on a batch differ from the outputs on its two halves."""
    name = "batch_size_invariance"
    if x.shape[0] < 2:
        return passed(name, "skipped: needs at least 2 samples")
    out = _forward(model, x) if out is None else out
    if not isinstance(out, Tensor):
        return passed(name, "skipped: the model does not return a tensor of logits")
    h = x.shape[0] // 2
    halves = torch.cat([_forward(model, x[:h]), _forward(model, x[h:])])
    diff = _max_diff(out, halves)
    if diff <= 10 * _tolerance(out) or _is_random(model):
        return passed(name, "outputs do not depend on the batch", max_diff=diff)
    return failed(
        name,
        "warning",
        f"outputs on a batch and on its halves differ (max logit difference {diff:.3g})",
        "the model mixes samples within a batch (e.g. BatchNorm in training mode); call "
        "model.eval() so each prediction depends on its own input only",
        max_diff=diff,
    )


# Registered once each, in the order the preflight runs them.


@register_check("inputs_in_bounds", "preflight")
def _inputs_in_bounds(p: Probe) -> Flag:
    return check_inputs_in_bounds(p.x, p.bounds)


@register_check("logits_not_probabilities", "preflight")
def _logits_not_probabilities(p: Probe) -> Flag:
    return check_logits(p.out)


@register_check("labels_in_range", "preflight")
def _labels_in_range(p: Probe) -> Flag:
    return check_labels(p.out, p.ys)


@register_check("eval_mode", "preflight", "nondeterminism")
def _eval_mode(p: Probe) -> Flag:
    return check_eval_mode(p.model)


@register_check("deterministic", "preflight", "nondeterminism")
def _deterministic(p: Probe) -> Flag:
    return check_deterministic(p.model, p.xs, p.out)


@register_check("batch_size_invariance", "preflight", "nondeterminism")
def _batch_size_invariance(p: Probe) -> Flag:
    return check_batch_size_invariance(p.model, p.xs, p.out)


__all__ = [
    "Probe",
    "check_batch_size_invariance",
    "check_deterministic",
    "check_eval_mode",
    "check_inputs_in_bounds",
    "check_labels",
    "check_logits",
    "preflight",
]
