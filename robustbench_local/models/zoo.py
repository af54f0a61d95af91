"""The model zoo's registry and builder, and the :class:`Normalize` layer every model starts with.

Every model takes float ``[N, C, H, W]`` inputs in ``[0, 1]`` and returns logits ``[N, classes]``;
its first layer is a :class:`Normalize` holding the dataset's mean and std, so attacks work in
input units. ``create_model`` sets ``arch`` (the registry name), ``arch_kwargs`` (what rebuilds
it), ``num_classes``, ``dataset`` and ``input_shape`` on the module. ``dropout`` adds an
``nn.Dropout`` right before the last linear layer. The architectures register themselves in
:data:`MODELS` (:mod:`.small`, :mod:`.resnets`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from attacks.registry import Registry
from attacks.validation import check_number, check_positive_int
from robustbench_local.data import dataset_info

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers (saved, moved with the model).

    Args:
        mean: Per-channel means (a sequence of length C, or a float for all channels).
        std: Per-channel standard deviations, all > 0.

    Raises:
        ValueError: If lengths differ or a std is not positive.

    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if m.numel() != s.numel():
            raise ValueError(f"mean has {m.numel()} channels but std has {s.numel()}")
        if not bool((s > 0).all()):
            raise ValueError(f"std must be positive, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[N, C, H, W]``."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Show the statistics in ``repr(model)``."""
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def model_names(pattern: str = "*") -> list[str]:
    """Sorted registered architecture names (shell-style ``pattern``)."""
    return MODELS.names(pattern)


def create_model(
    name: str, *, num_classes: int | None = None, dropout: float = 0.0, **kw: Any
) -> nn.Module:
    """Build a registered architecture (randomly initialised; seed with ``torch.manual_seed``).

    Args:
        name: One of :func:`model_names`.
        num_classes: Output classes; default: the dataset's.
        dropout: Dropout rate before the last linear layer, in ``[0, 1)``.
        **kw: Architecture options (e.g. ``dataset="fashion_mnist"`` for the MNIST models,
            ``depth``/``width`` for ``wide_resnet``).

    Returns:
        The model, in training mode, with ``arch``, ``arch_kwargs``, ``num_classes``,
        ``dataset`` and ``input_shape`` attributes.

    Raises:
        ValueError: Unknown name or invalid option values.
        TypeError: A non-numeric option, or one the architecture does not take (the accepted
            ones are listed).

    """
    factory = MODELS.get(name)
    params = _check_options(name, factory, num_classes, dropout, kw)
    info = dataset_info(kw.get("dataset", params["dataset"].default))
    num_classes = info.num_classes if num_classes is None else num_classes
    model = factory(num_classes=num_classes, dropout=float(dropout), **kw)
    model.arch = name.lower()
    model.arch_kwargs = {"num_classes": num_classes, "dropout": float(dropout), **kw}
    model.num_classes = num_classes
    model.dataset = info.name
    model.input_shape = info.shape
    return model


def _check_options(
    name: str,
    factory: Callable[..., nn.Module],
    num_classes: int | None,
    dropout: float,
    kw: Mapping[str, Any],
) -> Mapping[str, inspect.Parameter]:
    """Validate ``create_model``'s options; return the factory's parameters.

    Raises:
        ValueError: ``num_classes`` below 2 or ``dropout`` outside ``[0, 1)``.
        TypeError: A non-numeric option, or one the architecture does not take.
    """
    if num_classes is not None:
        check_positive_int("num_classes", num_classes, minimum=2)
    check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        accepted = sorted(p for p in params if p not in ("num_classes", "dropout"))
        raise TypeError(
            f"model {name!r} does not take {', '.join(unknown)}; it accepts "
            f"num_classes, dropout, {', '.join(accepted)}"
        )
    return params


def normalize_for(dataset: str, shape: tuple[int, int, int], arch: str) -> Normalize:
    """The Normalize layer for ``dataset``, checking its input shape fits the architecture.

    Raises:
        ValueError: The dataset's input shape is not ``shape``.
    """
    info = dataset_info(dataset)
    if info.shape != shape:
        raise ValueError(
            f"{arch} takes inputs of shape {shape} but dataset {dataset!r} has {info.shape}; "
            "pick a model made for that dataset"
        )
    return Normalize(info.mean, info.std)


__all__ = ["MODELS", "Normalize", "create_model", "model_names", "normalize_for"]
