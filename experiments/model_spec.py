"""A run's ``model`` node as a module: the zoo, a checkpoint or the user's class, then wrapped.

Three ways to name the model (``experiments/conf/model/``), one way to adapt it:

- the zoo: ``model=mnist_small_cnn`` (:func:`robustbench_local.create_model`);
- a checkpoint: ``model=checkpoint model.path=net.pt``. A file of
  :func:`robustbench_local.save_checkpoint` records its architecture; a plain
  ``torch.save(model.state_dict(), path)`` needs it named: ``model.arch=mypkg.nets:Net``
  (a registered name or an import path) with ``+model.arch_kwargs.width=64``. A checkpoint that
  records another architecture than ``model.arch`` is refused with both names. Loading never
  runs code from the file (:func:`load_checkpoint`);
- the user's class or function: ``model=custom model._target_=mypkg.nets.Net +model.width=64``.

``model.wrap`` (``+model.wrap.logits=logits``, ``+model.wrap.mean=[0.5]``,
``+model.wrap.std=[0.25]``, ``+model.wrap.input_scale=255``) wraps any of them with
:func:`robustbench_local.wrap_model`: the logits read from a dict or an output object,
normalisation and input scale inside the model. A model whose factory takes ``num_classes``
gets the data's number of classes unless the node sets it. A model built from the user's
class records its architecture (``arch``: the import path, ``arch_kwargs``: the node's
arguments), so its checkpoint and MLflow model rebuild it.

Example:
    >>> model = build_model_node(cfg.model, data.info)   # +model.wrap.logits=logits
    >>> type(model).__name__
    'WrappedModel'
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

import robustbench_local as rbl
from experiments.instantiate import build
from experiments.targets import launch_path, target_object
from robustbench_local.models import arch_name
from robustbench_local.models.spec import check_wrap

logger = logging.getLogger(__name__)

WRAP_KEY = "wrap"
HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
_CHECKPOINT_TARGETS = (
    "experiments.model_spec.load_checkpoint",
    "robustbench_local.load_checkpoint",
)


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    **more: Any,
) -> nn.Module:
    """The ``model=checkpoint`` target: a checkpoint or a plain state dict, in eval mode.

    Args:
        path: The file; a relative path is relative to the folder the command started in.
        arch: The architecture: a registered name or an import path ``mypkg.nets:Net``;
            needed for a plain state dict, and it must be the one a checkpoint records.
        arch_kwargs: The architecture's keyword arguments (``+model.arch_kwargs.width=64``).
        **more: Keyword arguments given at the node's top level (``+model.width=64``), as
            :func:`robustbench_local.load_checkpoint` takes them.

    Raises:
        FileNotFoundError: No such file.
        ValueError: See :func:`robustbench_local.load_checkpoint` (a plain state dict without
            ``arch``, another architecture than the recorded one, weights that do not fit).
    """
    kwargs = {**dict(arch_kwargs or {}), **more}
    return rbl.load_checkpoint(launch_path(path), arch=arch, **kwargs)


def split_wrap(node: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """The node without ``wrap``, and the ``wrap`` settings (checked, as keyword arguments).

    Raises:
        ValueError: ``wrap`` has a key :func:`robustbench_local.wrap_model` does not take.
    """
    container = dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    wrap = container.pop(WRAP_KEY, None)
    try:
        settings = check_wrap(wrap)
    except ValueError as err:
        raise ValueError(f"model.wrap: {err}") from err
    return OmegaConf.create(container), settings


def _takes_num_classes(target: Any) -> bool:
    """Whether a class or function has a ``num_classes`` parameter."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "num_classes" in params


def with_num_classes(node: DictConfig, num_classes: int | None) -> DictConfig:
    """The node with ``num_classes`` set to the data's when its target takes it and it is unset.

    A checkpoint's node is kept (its weights decide), and so is a target that does not import
    (:func:`experiments.instantiate.build` reports it).
    """
    target = node.get("_target_")
    if num_classes is None or target is None or "num_classes" in node:
        return node
    if str(target) in _CHECKPOINT_TARGETS:
        return node
    try:
        obj, _ = target_object(str(target), "model")
    except (ValueError, ImportError):
        return node
    if not _takes_num_classes(obj):
        return node
    out = node.copy()
    out.num_classes = int(num_classes)
    return out


def _plain(value: Any) -> bool:
    if value is None or type(value) in (bool, int, float, str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def record_architecture(model: nn.Module, node: DictConfig) -> None:
    """Set ``model.arch``/``arch_kwargs`` from a user target so that a checkpoint rebuilds it.

    Kept when the model has an ``arch`` already (zoo models, checkpoints). Nothing is set for
    a target that cannot be imported back by path, positional or nested arguments
    (``_args_``, another ``_target_``): the run then logs the weights only.
    """
    if getattr(model, "arch", None) is not None or node.get("_target_") is None:
        return
    container = dict(OmegaConf.to_container(node, resolve=True))  # type: ignore[arg-type]
    kwargs = {str(k): v for k, v in container.items() if k not in HYDRA_KEYS}
    if "_args_" in node or any(k.startswith("_") for k in kwargs) or not _plain(kwargs):
        return
    try:
        obj, _ = target_object(str(node._target_), "model")
        arch = arch_name(obj)
    except (ValueError, TypeError, ImportError):
        return
    model.arch, model.arch_kwargs = arch, kwargs


def build_model_node(node: DictConfig, num_classes: int | None = None) -> nn.Module:
    """Build the model a ``model`` node names, wrapped as ``model.wrap`` says.

    Args:
        node: ``cfg.model``.
        num_classes: The data's number of classes, for a factory that takes ``num_classes``
            and a node that does not set it.

    Raises:
        ValueError: The target does not build (the message names the ``model`` group), builds
            something that is not an ``nn.Module``, or bad ``wrap`` settings.
    """
    bare, wrap = split_wrap(node)
    bare = with_num_classes(bare, num_classes)
    model = build(bare, "model")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model._target_ must build an nn.Module, got {type(model).__name__}")
    record_architecture(model, bare)
    if wrap:
        logger.info("model wrapped: robustbench_local.wrap_model(model, %s)", _kwargs_text(wrap))
        model = rbl.wrap_model(model, **wrap)
    return model


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


__all__ = [
    "HYDRA_KEYS",
    "WRAP_KEY",
    "build_model_node",
    "load_checkpoint",
    "record_architecture",
    "split_wrap",
    "with_num_classes",
]
