"""A model as the entry points name it: a checkpoint, its architecture and how to wrap it.

The benchmark CLI (``--checkpoint``, ``--model``, ``--model-kwargs``, ``--wrap-logits``,
``--mean``, ``--std``, ``--input-scale``), the YAML gates (``model: {checkpoint, arch,
arch_kwargs, wrap}``) and the Hydra runs describe the user's model with the same four settings;
:func:`model_from_checkpoint` builds it and :func:`check_wrap` validates the ``wrap`` part, so
every entry point accepts and refuses the same things with the same words.

Example:
    >>> model = model_from_checkpoint("net.pt", arch="mypkg.nets:Net", arch_kwargs={"width": 16},
    ...                               wrap={"logits": "logits", "mean": [0.5], "std": [0.25]})
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from robustbench_local.models.checkpoints import load_checkpoint
from robustbench_local.models.wrap import wrap_model

WRAP_KEYS = ("logits", "mean", "std", "input_scale")
"""The settings of a ``wrap`` mapping: the keyword arguments of :func:`wrap_model`."""
MODEL_KEYS = ("checkpoint", "arch", "arch_kwargs", "wrap")
"""The settings of a model mapping (a YAML gate's ``model:``)."""


def _unknown_keys(given: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Raise for the first key of ``given`` not in ``known``, suggesting the closest one.

    Raises:
        ValueError: A key not in ``known``.
    """
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {where} setting {key!r}{hint}; known: {', '.join(known)}")


def check_wrap(wrap: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``wrap`` settings as :func:`wrap_model` keyword arguments, keys checked.

    Args:
        wrap: ``{"logits": ..., "mean": [...], "std": [...], "input_scale": ...}`` (any subset),
            or None.

    Returns:
        The settings as a dict (empty for None: no wrapping).

    Raises:
        ValueError: ``wrap`` is not a mapping, has a key other than :data:`WRAP_KEYS`, or
            only one of ``mean`` and ``std``.
    """
    if wrap is None:
        return {}
    if not isinstance(wrap, Mapping):
        raise ValueError(
            f"wrap must be a mapping such as {{logits: logits, mean: [0.5], std: [0.25]}}, got "
            f"{type(wrap).__name__}"
        )
    _unknown_keys(wrap, WRAP_KEYS, "wrap")
    if ("mean" in wrap) != ("std" in wrap):
        raise ValueError(
            "wrap needs both mean and std (the per-channel statistics the model expects its "
            "inputs normalised with), or neither"
        )
    return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in wrap.items()}


def check_model_mapping(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A model mapping (``checkpoint``, ``arch``, ``arch_kwargs``, ``wrap``) with its keys checked.

    Raises:
        ValueError: Unknown keys, no ``checkpoint``, ``arch_kwargs`` that is not a mapping, or
            bad ``wrap`` settings; each message says what to write.
    """
    _unknown_keys(spec, MODEL_KEYS, "model")
    if "checkpoint" not in spec:
        raise ValueError("the model needs a checkpoint: {checkpoint: path/to/model.pt, ...}")
    kwargs = spec.get("arch_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ValueError(
            f"arch_kwargs must be a mapping of the architecture's keyword arguments such as "
            f"{{width: 16}}, got {kwargs!r}"
        )
    return {**spec, "wrap": check_wrap(spec.get("wrap"))}


def model_from_checkpoint(
    checkpoint: str | os.PathLike[str],
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    wrap: Mapping[str, Any] | None = None,
    map_location: Any = "cpu",
) -> nn.Module:
    """Load a checkpoint (or a plain state dict) and wrap the model, in eval mode.

    Args:
        checkpoint: A :func:`~robustbench_local.models.save_checkpoint` file or a plain
            ``torch.save(model.state_dict(), path)`` file.
        arch: The architecture: a registered name or an import path ``"mypkg.nets:Net"``
            (required for a plain state dict; must match the one a checkpoint records).
        arch_kwargs: The architecture's keyword arguments, e.g. ``{"width": 16}``.
        wrap: :func:`wrap_model` settings (:data:`WRAP_KEYS`): where the logits are in the
            output, the per-channel ``mean``/``std`` the model expects, an ``input_scale``.
        map_location: Where to load the weights (a device puts the model there).

    Returns:
        The model (wrapped when ``wrap`` has settings), in eval mode.

    Raises:
        FileNotFoundError: No such checkpoint.
        ValueError: See :func:`~robustbench_local.models.load_checkpoint` and
            :func:`check_wrap`.
    """
    settings = check_wrap(wrap)
    model = load_checkpoint(checkpoint, arch=arch, map_location=map_location, **(arch_kwargs or {}))
    model = wrap_model(model, **settings) if settings else model
    return model.eval()


__all__ = [
    "MODEL_KEYS",
    "WRAP_KEYS",
    "check_model_mapping",
    "check_wrap",
    "model_from_checkpoint",
]
