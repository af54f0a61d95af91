"""Inference-time defenses: a preprocessor in front of a classifier, and how such defenses register.

:class:`Preprocessed` puts a preprocessor in front of a classifier and exposes the adaptive
protocol of :mod:`attacks.adaptive` (``preprocessor``, ``classifier``, ``surrogate``,
``differentiable``, ``random``), so ``robustness_curve(..., adaptive="auto")`` reports both the
naive and the adaptive (BPDA/EOT) robust accuracy. :class:`InputDefense` is what the registry
builds for a preprocessor: ``wrap(model)`` returns the :class:`Preprocessed` model.
:func:`register_input_defense` registers a preprocessor class once, as an inference defense
whose registry metadata names the class (``DEFENSES.metadata(name)["preprocessor"]``).

Example:
    >>> @register_input_defense("invert")
    ... class Invert(Preprocessor):
    ...     def forward(self, x):
    ...         return 1 - x
    >>> guarded = defenses.create("invert").wrap(model)

References:
    Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.

"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

from defenses.data import model_device
from defenses.registry import DEFENSES, register_defense

ModuleT = TypeVar("ModuleT", bound=nn.Module)


class Preprocessed(nn.Module):
    """``classifier(preprocessor(x))``: an inference-time defense that obeys the model contract.

    It exposes the adaptive protocol of :mod:`attacks.adaptive`.

    Args:
        preprocessor: An input transformation (``[0, 1]`` to ``[0, 1]``).
        classifier: The model it protects (returns logits).
        surrogate: BPDA backward-pass approximation; default the preprocessor's
            ``surrogate()`` or identity.
        differentiable: Override the preprocessor's declaration.
        random: Override the preprocessor's declaration.

    Attributes:
        preprocessor, classifier, surrogate: The modules above.
        differentiable: Whether gradients through the preprocessor are meaningful.
        random: Whether the forward pass is random.

    """

    def __init__(
        self,
        preprocessor: nn.Module,
        classifier: nn.Module,
        surrogate: nn.Module | None = None,
        *,
        differentiable: bool | None = None,
        random: bool | None = None,
    ) -> None:
        super().__init__()
        for name, m in (("preprocessor", preprocessor), ("classifier", classifier)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(m).__name__}")
        self.preprocessor = preprocessor
        self.classifier = classifier
        if surrogate is None:
            make = getattr(preprocessor, "surrogate", None)
            surrogate = make() if callable(make) else nn.Identity()
        self.surrogate = surrogate
        if differentiable is None:
            differentiable = getattr(preprocessor, "differentiable", True)
        if random is None:
            random = getattr(preprocessor, "random", False)
        self.differentiable = bool(differentiable)
        self.random = bool(random)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the classifier on the preprocessed input."""
        return self.classifier(self.preprocessor(x))


class InputDefense:
    """An inference-time defense: ``wrap(model)`` puts its preprocessor in front of ``model``.

    Args:
        name: The registry name.
        preprocessor: The preprocessing module (shared by every wrapped model).

    """

    def __init__(self, name: str, preprocessor: nn.Module) -> None:
        self.name = name
        self.preprocessor = preprocessor

    @property
    def differentiable(self) -> bool:
        """Whether the preprocessor is differentiable."""
        return bool(getattr(self.preprocessor, "differentiable", True))

    @property
    def random(self) -> bool:
        """Whether the preprocessor is random."""
        return bool(getattr(self.preprocessor, "random", False))

    def wrap(self, model: nn.Module) -> Preprocessed:
        """``Preprocessed(preprocessor, model)`` on the model's device, in eval mode."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"wrap expects an nn.Module classifier, got {type(model).__name__}")
        self.preprocessor.to(model_device(model))
        return Preprocessed(self.preprocessor, model).eval()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.preprocessor!r})"


def register_input_defense(name: str) -> Callable[[type[ModuleT]], type[ModuleT]]:
    """Register a preprocessor class as the inference defense ``name`` and return the class.

    ``defenses.create(name, **kw)`` then builds ``InputDefense(name, cls(**kw))``; the registry
    records ``kind="inference"`` and ``preprocessor=cls``.
    """

    def decorator(cls: type[ModuleT]) -> type[ModuleT]:
        def factory(**kwargs: Any) -> InputDefense:
            return InputDefense(name, cls(**kwargs))

        factory.__name__ = name
        factory.__doc__ = f"Input defense {name!r}: wraps a model with :class:`{cls.__name__}`."
        factory.__signature__ = inspect.signature(cls)  # type: ignore[attr-defined]
        register_defense(name, kind="inference", preprocessor=cls)(factory)
        return cls

    return decorator


def preprocessor_names() -> list[str]:
    """The registered inference defenses that are a single preprocessor (e.g. ``bit_depth``)."""
    return [n for n in DEFENSES.names(kind="inference") if "preprocessor" in DEFENSES.metadata(n)]


def create_preprocessor(name: str, **kwargs: Any) -> nn.Module:
    """The preprocessor module registered as ``name``, built with ``kwargs``.

    Raises:
        ValueError: ``name`` is not a registered preprocessor (the known ones are listed).

    """
    known = preprocessor_names()
    if name not in known:
        raise ValueError(f"Unknown preprocessor {name!r}; use one of: {', '.join(known)}")
    return DEFENSES.metadata(name)["preprocessor"](**kwargs)


__all__ = [
    "InputDefense",
    "Preprocessed",
    "create_preprocessor",
    "preprocessor_names",
    "register_input_defense",
]
