"""Adaptive attacks on defended models: BPDA for non-differentiable parts, EOT for randomness.

An inference-time defense that wraps a classifier exposes the *adaptive protocol*:

- ``preprocessor``: the input transformation (an ``nn.Module``),
- ``classifier``: the model it protects,
- ``surrogate``: a differentiable approximation of the preprocessor (identity by default),
- ``differentiable``: whether gradients through ``preprocessor`` are meaningful,
- ``random``: whether the forward pass draws random numbers.

The wrappers here turn such a model into one whose gradients an ordinary attack can follow, so
any registered attack becomes an adaptive attack: ``atk(adaptive_model(defended), x, y, eps=...)``.

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security:
    Circumventing Defenses to Adversarial Examples", ICML 2018.

"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attacks.validation import check_positive_int


def needs_adaptive(model: nn.Module) -> bool:
    """True when ``model`` declares a non-differentiable or random forward pass."""
    return (not getattr(model, "differentiable", True)) or bool(getattr(model, "random", False))


def _check_protocol(model: nn.Module) -> None:
    for attr in ("preprocessor", "classifier"):
        if not hasattr(model, attr):
            raise TypeError(
                "BPDA needs a wrapped model exposing `preprocessor` and `classifier` (the "
                f"adaptive protocol of attacks.adaptive); {type(model).__name__} has no `{attr}`"
            )


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (straight-through on the preprocessor).

    The forward pass is the defended model's; the backward pass replaces the preprocessor by its
    ``surrogate`` (identity unless the defense declares another), so attacks get useful gradients
    through rounding, median filters, JPEG and the like.

    Args:
        model: A model that follows the adaptive protocol (see the module docstring).

    References:
        Athalye, Carlini & Wagner, ICML 2018, Section 4.1.

    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _check_protocol(model)
        self.defended = model
        self.random = bool(getattr(model, "random", False))
        self.differentiable = True

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the defended model, differentiable through the surrogate."""
        surrogate = getattr(self.defended, "surrogate", None) or nn.Identity()
        approx = surrogate(x)
        with torch.no_grad():
            exact = self.defended.preprocessor(x)
        return self.defended.classifier(approx + (exact - approx).detach())


class EOT(nn.Module):
    """Expectation over Transformation: average the logits of ``samples`` random forward passes.

    The gradient of the average is the average of the gradients, which is what EOT estimates.
    A prediction of this wrapper is the defense's expected (averaged) decision.

    Args:
        model: A model with a random forward pass.
        samples: Number of draws averaged per forward pass (default 8).

    References:
        Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018;
        Athalye, Carlini & Wagner, ICML 2018, Section 4.3.

    """

    def __init__(self, model: nn.Module, samples: int = 8) -> None:
        super().__init__()
        self.model = model
        self.samples = check_positive_int("EOT samples", samples)
        self.random = False
        self.differentiable = True

    def forward(self, x: Tensor) -> Tensor:
        """Mean logits over ``samples`` draws."""
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(dim=0)


def adaptive_model(model: nn.Module, eot_samples: int = 8) -> nn.Module:
    """Wrap ``model`` for an adaptive attack: BPDA if non-differentiable, EOT if random.

    A model that declares ``differentiable=False`` keeps its declared BPDA surrogate: the
    defense knows its preprocessor best (a median filter or JPEG may come with a better
    surrogate than the identity), so :class:`BPDA` uses ``model.surrogate``, and the rounding
    inside the preprocessor is never differentiated (it runs under ``torch.no_grad``). A model
    that declares ``differentiable=False`` but does not expose the adaptive protocol (no
    ``preprocessor``/``classifier``) has declared nothing to approximate with: it gets
    straight-through gradients for the rounding-like operations of its ``forward``
    (:class:`~attacks.straight_through.StraightThrough`, BPDA with the identity surrogate
    applied op by op). A model that declares nothing is returned unchanged (with EOT if it
    declares ``random``): rounding hidden in an undeclared model is found on data by
    :func:`~attacks.straight_through.find_rounding_ops` and attacked through
    :func:`~attacks.straight_through.straight_through_model`, which also composes with this
    wrapper (``straight_through_model(adaptive_model(m))`` also sees through rounding inside
    the classifier of a BPDA-wrapped defense).

    Raises:
        ValueError: ``eot_samples`` is not a positive integer.
    """
    out = model
    if not getattr(model, "differentiable", True):
        if all(hasattr(model, attr) for attr in ("preprocessor", "classifier")):
            out = BPDA(out)
        else:
            from attacks.straight_through import StraightThrough  # it imports this module

            out = StraightThrough(out)
    if getattr(model, "random", False):
        out = EOT(out, samples=eot_samples)
    return out
