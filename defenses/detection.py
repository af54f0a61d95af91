"""Adversarial-input detection by feature squeezing (Xu et al. 2018).

The detector compares the model's softmax on an input with its softmax on "squeezed" versions
of the input (reduced bit depth, median filtered). Adversarial perturbations tend to be undone
by squeezing, so the L1 distance between the predictions is large; the score is the maximum over
squeezers, and the threshold is fitted on clean validation data for a target false-positive rate.

Example:
    >>> det = FeatureSqueezing(model, fpr=0.05).fit(x_val)
    >>> flagged = det.detect(x_adv)          # bool [N]
    >>> det.report(x_test, x_adv, y_test)    # fpr, detection rates, threshold, auc

References:
    Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep Neural
    Networks", NDSS 2018. https://arxiv.org/abs/1704.01155

"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from attacks.validation import check_number, check_positive_int
from defenses.data import model_device, tensors_of
from defenses.inference import create_preprocessor, preprocessor_names
from defenses.preprocessors import BitDepth, MedianFilter

logger = logging.getLogger(__name__)

SqueezerSpec = nn.Module | str | tuple[str, dict[str, Any]]


def make_squeezer(spec: SqueezerSpec) -> nn.Module:
    """Build a squeezer from a module, a registered preprocessor's name, or ``(name, kwargs)``.

    Raises:
        ValueError: Unknown preprocessor name (the known ones are listed).

    """
    if isinstance(spec, nn.Module):
        return spec
    name, kwargs = (spec, {}) if isinstance(spec, str) else spec
    if name not in preprocessor_names():
        raise ValueError(
            f"Unknown squeezer {name!r}; use an nn.Module or one of: "
            f"{', '.join(preprocessor_names())}"
        )
    return create_preprocessor(name, **kwargs)


class FeatureSqueezing:
    """Feature-squeezing detector: L1 distance of softmax outputs, max over squeezers.

    Args:
        model: The classifier (returns logits).
        squeezers: Modules, preprocessor names, or ``(name, kwargs)`` pairs. Default: 1-bit
            depth and a 2x2 median filter, Xu et al.'s MNIST configuration.
        fpr: Target false-positive rate on clean data used by :meth:`fit` (default 0.05).
        batch_size: Batch size for scoring.

    """

    def __init__(
        self,
        model: nn.Module,
        squeezers: Sequence[SqueezerSpec] | None = None,
        *,
        fpr: float = 0.05,
        batch_size: int = 500,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        specs = squeezers if squeezers is not None else [BitDepth(1), MedianFilter(2)]
        self.squeezers = [make_squeezer(s) for s in specs]
        if not self.squeezers:
            raise ValueError("feature squeezing needs at least one squeezer")
        self.fpr = check_number("fpr", fpr, low_open=True, high=1.0, high_open=True)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.threshold: float | None = None

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """Per-sample detection score ``max_s |softmax(f(x)) - softmax(f(s(x)))|_1``: ``[N]``."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ValueError("score expects an image batch tensor [N, C, H, W]")
        device = model_device(self.model)
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i : i + self.batch_size].to(device)
                p = F.softmax(self.model(xb), dim=1)
                dists = [
                    (p - F.softmax(self.model(s.to(device)(xb)), dim=1)).abs().sum(1)
                    for s in self.squeezers
                ]
                out.append(torch.stack(dists).amax(0).cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(out)

    def fit(self, clean: Tensor | Dataset) -> FeatureSqueezing:
        """Set the threshold so a fraction ``fpr`` of ``clean`` inputs is flagged.

        Args:
            clean: Clean validation images ``[N, C, H, W]`` or a Dataset of ``(x, y)``.

        """
        x = clean if isinstance(clean, Tensor) else tensors_of(clean)[0]
        scores = self.score(x)
        if scores.numel() < 1 / self.fpr:
            logger.warning(
                "fitting a %.3g false-positive rate on only %d clean samples: the threshold is "
                "coarse",
                self.fpr,
                scores.numel(),
            )
        self.threshold = float(torch.quantile(scores, 1 - self.fpr, interpolation="higher"))
        return self

    def detect(self, x: Tensor) -> Tensor:
        """Boolean ``[N]``: True where the input is flagged as adversarial.

        Raises:
            RuntimeError: :meth:`fit` has not set a threshold.

        """
        if self.threshold is None:
            raise RuntimeError("call fit(clean_validation_data) before detect()")
        return self.score(x) > self.threshold

    def detection_rate(self, x_adv: Tensor) -> float:
        """Fraction of ``x_adv`` flagged."""
        return float(self.detect(x_adv).float().mean())

    def report(self, x_clean: Tensor, x_adv: Tensor, y: Tensor | None = None) -> dict[str, float]:
        """False-positive rate on ``x_clean``, detection rates and ROC-AUC on ``x_adv``.

        With labels ``y`` (of ``x_adv``), ``detection_rate_successful`` counts only adversarial
        inputs that fool the model, as Xu et al. report.
        """
        s_clean, s_adv = self.score(x_clean), self.score(x_adv)
        if self.threshold is None:
            raise RuntimeError("call fit(clean_validation_data) before report()")
        flagged = s_adv > self.threshold
        out = {
            "threshold": self.threshold,
            "fpr": float((s_clean > self.threshold).float().mean()),
            "detection_rate": float(flagged.float().mean()),
            "roc_auc": _auc(s_clean, s_adv),
        }
        if y is not None:
            with torch.no_grad():
                logits = self.model(x_adv.to(model_device(self.model)))
            fooled = (logits.argmax(1).cpu() != y.cpu()).bool()
            out["n_successful"] = float(fooled.sum())
            out["detection_rate_successful"] = (
                float(flagged[fooled].float().mean()) if bool(fooled.any()) else float("nan")
            )
        return out


def _auc(neg: Tensor, pos: Tensor) -> float:
    """ROC-AUC: probability a positive scores above a negative (ties count one half)."""
    diff = pos.view(-1, 1) - neg.view(1, -1)
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


__all__ = ["FeatureSqueezing", "make_squeezer"]
