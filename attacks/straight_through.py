"""Straight-through gradients for rounding-like operations hidden in a model's ``forward``.

PLACEHOLDER (engineer "reference"): the "ste" engineer writes the real module with exactly this
interface (a ``torch.overrides.TorchFunctionMode`` that finds and replaces rounding-like
operations); theirs replaces this file at the merge. This stand-in finds nothing and its
wrapper is the model itself, so the evaluation's wiring can be built and tested meanwhile.

References:
    Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through Stochastic Neurons
    for Conditional Computation", arXiv:1308.3432, 2013.
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
"""

from __future__ import annotations

from torch import Tensor, nn

from attacks.adaptive import EOT


def find_rounding_ops(model: nn.Module, x: Tensor) -> list[str]:
    """Names of the rounding-like operations ``model``'s forward pass runs on ``x`` (none here)."""
    return []


class StraightThrough(nn.Module):
    """``model`` with straight-through gradients for its rounding ops (here: the model as is).

    Args:
        model: The model to wrap; its forward pass is unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.random = bool(getattr(model, "random", False))
        self.differentiable = True

    def forward(self, x: Tensor) -> Tensor:
        """The model's logits."""
        return self.model(x)


def straight_through_model(model: nn.Module, eot_samples: int = 8) -> nn.Module:
    """``StraightThrough(model)``, averaged over ``eot_samples`` draws if it declares randomness."""
    wrapped: nn.Module = StraightThrough(model)
    if getattr(model, "random", False):
        wrapped = EOT(wrapped, samples=eot_samples)
    return wrapped


__all__ = ["StraightThrough", "find_rounding_ops", "straight_through_model"]
