"""The model zoo's registry and builder, and the :class:`Normalize` layer every model starts with.

Every model takes float ``[N, C, H, W]`` inputs in ``[0, 1]`` and returns logits ``[N, classes]``;
its first layer is a :class:`Normalize` holding the dataset's mean and std, so attacks work in
input units. ``create_model`` returns the model in eval mode and sets ``arch`` (the registry
name), ``arch_kwargs`` (what rebuilds it), ``num_classes``, ``dataset`` and ``input_shape`` on
the module. ``dropout`` adds an ``nn.Dropout`` right before the last linear layer. The
architectures register themselves in :data:`MODELS` (:mod:`.small`, :mod:`.resnets`); a user's
architecture registers with :func:`register_model` or is named by its import path
(``create_model("mypkg.nets:Net", width=8)``, :mod:`robustbench_local.imports`).
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
from robustbench_local.imports import import_object, is_import_path

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


def register_model(
    name: str, **metadata: Any
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register an architecture so that it is built and loaded by name.

    After ``@register_model("mynet")``, ``create_model("mynet", width=8)`` builds it and
    :func:`~robustbench_local.models.checkpoints.load_checkpoint` rebuilds checkpoints that
    record ``arch="mynet"``. The factory (a class or a function) takes keyword arguments; it
    gets ``num_classes``, ``dropout`` and ``dataset`` only if it has such parameters. Its model
    must follow the model contract (inputs in ``[0, 1]``, logits out; see :func:`wrap_model`).
    Registration lasts for the process: the module that registers must be imported before
    loading (an architecture named by import path, ``"mypkg.nets:Net"``, needs no registration).

    Args:
        name: The architecture's name (case-insensitive, unique).
        **metadata: Stored with the entry (``MODELS.metadata(name)``).

    Raises:
        ValueError: ``name`` is already taken by another factory.

    Example:
        >>> @register_model("tiny_cnn")
        ... class TinyCNN(nn.Module):
        ...     def __init__(self, num_classes: int = 10, width: int = 8): ...
        >>> model = create_model("tiny_cnn", width=16)
    """
    return MODELS.register(name, **metadata)


def create_model(
    name: str, *, num_classes: int | None = None, dropout: float | None = None, **kw: Any
) -> nn.Module:
    """Build an architecture (randomly initialised; seed with ``torch.manual_seed``).

    Args:
        name: A registered name (:func:`model_names`, :func:`register_model`) or an import
            path ``"mypkg.nets:Net"`` of a class or function returning an ``nn.Module``.
        num_classes: Output classes; default: the dataset's (for factories taking ``dataset``).
        dropout: Dropout rate before the last linear layer, in ``[0, 1)`` (default 0 for the
            zoo; a user factory keeps its own default unless this is given).
        **kw: Architecture options (e.g. ``dataset="fashion_mnist"`` for the MNIST models,
            ``depth``/``width`` for ``wide_resnet``).

    Returns:
        The model, in eval mode (call ``model.train()`` to train it), with ``arch`` (the
        name), ``arch_kwargs`` (what rebuilds it) and, where known, ``num_classes``,
        ``dataset`` and ``input_shape`` attributes.

    Raises:
        ValueError: Unknown name, an import path that does not resolve, or invalid option
            values.
        TypeError: A non-numeric option, one the architecture does not take (the accepted
            ones are listed), or a factory that does not return an ``nn.Module``.

    """
    factory = _factory(name)
    params = _check_options(name, factory, num_classes, dropout, kw)
    info = (
        dataset_info(kw.get("dataset", params["dataset"].default)) if "dataset" in params else None
    )
    call_kw = dict(kw)
    if "num_classes" in params or num_classes is not None:
        num_classes = info.num_classes if num_classes is None and info is not None else num_classes
        if num_classes is not None:
            call_kw["num_classes"] = num_classes
    if dropout is not None or _required(params.get("dropout")):
        call_kw["dropout"] = float(dropout or 0.0)
    model = factory(**call_kw)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"architecture {name!r} returned a {type(model).__name__}, not an nn.Module"
        )
    model.arch = name if is_import_path(name) else name.lower()
    model.arch_kwargs = call_kw
    if "num_classes" in call_kw:
        model.num_classes = call_kw["num_classes"]
    if info is not None:
        model.dataset = info.name
        model.input_shape = info.shape
    return model.eval()


def _factory(name: str) -> Callable[..., nn.Module]:
    """The registered factory, or the class/function an import path names."""
    if not is_import_path(name):
        return MODELS.get(name)
    factory = import_object(name, "architecture")
    if not callable(factory):
        raise TypeError(f"architecture {name!r} is a {type(factory).__name__}, not a class")
    return factory


def _required(param: inspect.Parameter | None) -> bool:
    return param is not None and param.default is inspect.Parameter.empty


def _check_options(
    name: str,
    factory: Callable[..., nn.Module],
    num_classes: int | None,
    dropout: float | None,
    kw: Mapping[str, Any],
) -> Mapping[str, inspect.Parameter]:
    """Validate ``create_model``'s options; return the factory's parameters.

    Raises:
        ValueError: ``num_classes`` below 2 or ``dropout`` outside ``[0, 1)``.
        TypeError: A non-numeric option, or one the architecture does not take.
    """
    if num_classes is not None:
        check_positive_int("num_classes", num_classes, minimum=2)
    if dropout is not None:
        check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return params
    unknown = sorted(k for k in kw if k not in params)
    for key, value in (("num_classes", num_classes), ("dropout", dropout)):
        if value is not None and key not in params:
            unknown.append(key)
    if unknown:
        front = [p for p in ("num_classes", "dropout") if p in params]
        rest = sorted(p for p in params if p not in ("num_classes", "dropout"))
        raise TypeError(
            f"model {name!r} does not take {', '.join(unknown)}; it accepts "
            f"{', '.join(front + rest) or 'no options'}"
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


__all__ = [
    "MODELS",
    "Normalize",
    "create_model",
    "model_names",
    "normalize_for",
    "register_model",
]
