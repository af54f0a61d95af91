"""Safe checkpoints: plain data and tensors, a SHA-256 digest of the weights, atomic writes.

Checkpoints (:func:`save_checkpoint`/:func:`load_checkpoint`) are ``torch.save`` files of plain
data (architecture name, its kwargs, the state dict, a SHA-256 digest, user metadata) read back
with ``torch.load(weights_only=True)``; the digest is verified and the architecture checked, so
a corrupt, tampered or mismatched file is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defenses.storage import atomic_torch_save, load_trusted
from robustbench_local.models.zoo import MODELS, create_model, model_names

FORMAT_VERSION = 1
_CKPT_KEYS = ("format_version", "arch", "kwargs", "state_dict", "digest", "meta")


def weights_digest(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the state dict: sorted names, dtypes, shapes and raw bytes.

    Args:
        model: A module or a state dict.

    Returns:
        64 hex characters; equal weights (and buffers) give equal digests on any device.

    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _check_plain(value: Any, where: str) -> None:
    """Metadata and kwargs must be plain data so that ``weights_only`` loading accepts them."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold plain data only "
        "(None, bool, int, float, str, list, tuple, dict): convert it first"
    )


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Save weights, architecture and metadata to ``path`` atomically; return the digest.

    Args:
        model: The model (its ``arch``/``arch_kwargs`` from :func:`create_model` are stored).
        path: Destination file (parent folders are created).
        arch: Architecture name for a model not built by :func:`create_model`; if the model has
            an ``arch`` it must agree.
        meta: Plain JSON-like metadata (training recipe, metrics, ...).

    Returns:
        The :func:`weights_digest` of the saved state dict.

    Raises:
        ValueError: No architecture name, or ``arch`` disagrees with ``model.arch``.
        TypeError: ``meta`` or the model's kwargs are not plain data.

    """
    arch = _architecture(model, arch)
    kwargs = dict(getattr(model, "arch_kwargs", {}))
    meta = dict(meta or {})
    _check_plain(kwargs, "model.arch_kwargs")
    _check_plain(meta, "meta")
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    digest = weights_digest(state)
    ckpt = {"format_version": FORMAT_VERSION, "arch": arch, "kwargs": kwargs}
    atomic_torch_save({**ckpt, "state_dict": state, "digest": digest, "meta": meta}, path)
    return digest


def _architecture(model: nn.Module, arch: str | None) -> str:
    """The architecture name to store: ``arch``, else the model's own ``arch``.

    Raises:
        ValueError: Neither is set, or they disagree.
    """
    model_arch = getattr(model, "arch", None)
    if arch is not None and model_arch is not None and arch.lower() != model_arch:
        raise ValueError(f"arch={arch!r} but the model is a {model_arch!r}; drop arch=")
    name = (arch or model_arch or "").lower()
    if not name:
        raise ValueError("the model has no `arch` attribute: pass arch= (the architecture name)")
    return name


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    """Load a checkpoint's dict and verify its layout, format version and digest."""
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; check the path (save one with save_checkpoint)"
        )
    try:
        ckpt = load_trusted(path, map_location=map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or holding objects "
            f"other than plain data and tensors): {err}"
        ) from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CKPT_KEYS):
        raise ValueError(
            f"{path} is not a robustbench_local checkpoint: expected a dict with keys "
            f"{', '.join(_CKPT_KEYS)}; write one with save_checkpoint"
        )
    if ckpt["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {ckpt['format_version']!r}; this version reads "
            f"{FORMAT_VERSION}"
        )
    if weights_digest(ckpt["state_dict"]) != ckpt["digest"]:
        raise ValueError(
            f"{path}: the weights do not match the stored digest {ckpt['digest']}; the file "
            "is corrupt or was tampered with, do not use it"
        )
    return ckpt


def _describe(arch: str | None, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return f"{arch or 'an unnamed model'}({args})"


def _check_compatible(model: nn.Module, ckpt: Mapping[str, Any], path: Path) -> None:
    """Raise unless the checkpoint's architecture and weight shapes fit ``model``."""
    theirs = _describe(ckpt["arch"], ckpt["kwargs"])
    ours = _describe(getattr(model, "arch", None), getattr(model, "arch_kwargs", {}))
    model_arch = getattr(model, "arch", None)
    if model_arch is not None and model_arch != ckpt["arch"]:
        raise ValueError(
            f"{path} holds a {theirs} but the model is a {ours}; load it into a "
            f"{ckpt['arch']!r} model or pass model=None to rebuild it"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    diffs = sorted(
        f"{k}: checkpoint {found.get(k, 'missing')} vs model {expected.get(k, 'missing')}"
        for k in set(expected) | set(found)
        if found.get(k) != expected.get(k)
    )
    if diffs:
        raise ValueError(
            f"{path} holds a {theirs} whose weights do not fit the model, a {ours} "
            f"({len(diffs)} mismatches, e.g. {'; '.join(diffs[:3])}); build the model with "
            "the checkpoint's kwargs or pass model=None"
        )


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, map_location: Any = "cpu"
) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its digest.

    Args:
        path: Checkpoint file.
        model: Load into this model (its architecture must match; its train/eval mode is
            kept). If ``None``, the stored architecture is rebuilt and returned in eval mode.
        map_location: Passed to ``torch.load``; a rebuilt model is moved there if it is a
            device or device string.

    Returns:
        The model, with ``checkpoint_meta`` (the stored ``meta``) and ``checkpoint_digest``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Corrupt or tampered file, or a checkpoint for another architecture.

    """
    path = Path(path)
    ckpt = _read_checkpoint(path, map_location)
    if model is None:
        if ckpt["arch"] not in MODELS:
            raise ValueError(
                f"{path} holds an {ckpt['arch']!r} model, which is not registered (known: "
                f"{', '.join(model_names())}); build it yourself and pass model="
            )
        model = create_model(ckpt["arch"], **ckpt["kwargs"]).eval()
        if isinstance(map_location, str | torch.device):
            model = model.to(map_location)
    _check_compatible(model, ckpt, path)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.checkpoint_meta = ckpt["meta"]
    model.checkpoint_digest = ckpt["digest"]
    return model


__all__ = ["FORMAT_VERSION", "load_checkpoint", "save_checkpoint", "weights_digest"]
