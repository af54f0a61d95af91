"""Safe checkpoints: plain data and tensors, a SHA-256 digest of the weights, atomic writes.

Checkpoints (:func:`save_checkpoint`/:func:`load_checkpoint`) are ``torch.save`` files of plain
data (architecture name, its kwargs, the state dict, a SHA-256 digest, user metadata) read back
with ``torch.load(weights_only=True)``; the digest is verified and the architecture checked, so
a corrupt, tampered or mismatched file is refused with a clear error.

The architecture is recorded by name: a registered one (``create_model``'s zoo, or the user's
own through :func:`~robustbench_local.models.zoo.register_model`), or the import path
``module:QualName`` of the user's class (``mypkg.nets:Net``), which loading imports; no code is
ever read from the file. A plain state dict (``torch.save(model.state_dict(), path)``) loads too
when the architecture is named: ``load_checkpoint(path, arch="mypkg.nets:Net", width=16)``.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from defenses.storage import atomic_torch_save, load_trusted
from robustbench_local.imports import (
    import_object,
    import_path_of,
    is_import_path,
    load_refusal,
)
from robustbench_local.models.wrap import WrappedModel
from robustbench_local.models.zoo import MODELS, create_model, model_names

logger = logging.getLogger(__name__)

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
    if value is None or type(value) in (bool, int, float, str):  # not subclasses such as
        return  # torch's TorchVersion, which weights_only loading refuses
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
    arch: str | Callable[..., nn.Module] | None = None,
    meta: Mapping[str, Any] | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Save weights, architecture and metadata to ``path`` atomically; return the digest.

    The architecture is recorded by name, never as code: the registered name of a model built
    by :func:`create_model`, ``arch=``, or else the import path ``module:QualName`` of the
    model's class (a class of the user's package: ``mypkg.nets:Net``).

    Args:
        model: The model (its ``arch``/``arch_kwargs`` from :func:`create_model` are stored).
        path: Destination file (parent folders are created).
        arch: Architecture: a registered name (see
            :func:`~robustbench_local.models.zoo.register_model`), an import path
            ``"mypkg.nets:Net"`` or the class itself; default the model's ``arch``, else its
            class's import path. If the model has an ``arch`` it must agree.
        meta: Plain JSON-like metadata (training recipe, metrics, ...).
        arch_kwargs: The keyword arguments that rebuild the architecture (default the model's
            ``arch_kwargs``, else none), e.g. ``{"width": 16}`` for ``Net(width=16)``.

    Returns:
        The :func:`weights_digest` of the saved state dict.

    Raises:
        ValueError: ``arch`` disagrees with ``model.arch``; the class cannot be imported again
            (defined in ``__main__`` or a function: the message says what to do); a
            ``torch.nn`` container such as ``nn.Sequential`` without ``arch=``; a wrapped
            model; or constructor arguments without defaults that ``arch_kwargs`` lacks.
        TypeError: ``meta`` or the model's kwargs are not plain data.

    """
    if isinstance(model, WrappedModel):
        raise ValueError(
            "save the model inside the wrapper, save_checkpoint(model.model, path), and wrap "
            "it again after loading: wrap_model's settings are code, not weights"
        )
    arch = _architecture(model, arch)
    kwargs = _arch_kwargs(model, arch, arch_kwargs)
    meta = dict(meta or {})
    _check_plain(kwargs, "model.arch_kwargs")
    _check_plain(meta, "meta")
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    digest = weights_digest(state)
    ckpt = {"format_version": FORMAT_VERSION, "arch": arch, "kwargs": kwargs}
    atomic_torch_save({**ckpt, "state_dict": state, "digest": digest, "meta": meta}, path)
    return digest


def arch_name(arch: str | Callable[..., nn.Module]) -> str:
    """The recorded form of an architecture: a registered name (lower case) or an import path.

    Raises:
        ValueError: A class or function that cannot be imported again (see
            :func:`~robustbench_local.imports.import_path_of`).
        TypeError: ``arch`` is neither a string nor a class or function.
    """
    if isinstance(arch, str):
        return arch if is_import_path(arch) else arch.lower()
    if callable(arch):
        return import_path_of(arch)
    raise TypeError(f"arch must be a name, an import path or a class, got {type(arch).__name__}")


def _architecture(model: nn.Module, arch: str | Callable[..., nn.Module] | None) -> str:
    """The architecture to store: ``arch``, else the model's ``arch``, else its class's path.

    Raises:
        ValueError: ``arch`` and ``model.arch`` disagree, or the class cannot be recorded.
    """
    model_arch = getattr(model, "arch", None)
    name = arch_name(arch) if arch is not None else None
    if name is not None and model_arch is not None and name != model_arch:
        raise ValueError(f"arch={name!r} but the model is a {model_arch!r}; drop arch=")
    if name or model_arch:
        return str(name or model_arch)
    cls = type(model)
    if cls.__module__.split(".")[0] == "torch":
        raise ValueError(
            f"the model is a torch {cls.__name__}, which its class alone cannot rebuild: pass "
            "arch= (a registered name or the import path of a function that builds it), or "
            "define the network as an nn.Module class in your package"
        )
    return import_path_of(cls)


def _arch_kwargs(model: nn.Module, arch: str, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The kwargs that rebuild ``arch``, checked to cover the constructor's required ones."""
    own = getattr(model, "arch_kwargs", None)
    if given is not None and own is not None and dict(given) != dict(own):
        raise ValueError(
            f"arch_kwargs={dict(given)!r} but the model was built with {dict(own)!r}; drop "
            "arch_kwargs="
        )
    kwargs = dict(given if given is not None else own or {})
    if is_import_path(arch):
        factory = import_object(arch, "architecture")
        missing = [
            p.name
            for p in inspect.signature(factory).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in kwargs
        ]
        if missing:
            raise ValueError(
                f"{arch} takes {', '.join(missing)} without defaults: pass "
                f"arch_kwargs={{{', '.join(f'{m!r}: ...' for m in missing)}}} (the values the "
                "model was built with) so that the checkpoint can rebuild it"
            )
    return kwargs


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    """Load a checkpoint's dict and verify its layout, format version and digest.

    A plain state dict (``torch.save(model.state_dict(), path)``) comes back in the same
    layout, with no architecture (``arch=None``) and its digest computed (none to verify).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; check the path (save one with save_checkpoint)"
        )
    try:
        ckpt = load_trusted(path, map_location=map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or holding objects "
            f"other than plain data and tensors): {load_refusal(err)}"
        ) from err
    if _is_state_dict(ckpt):
        logger.info("%s is a plain state dict: no architecture or digest recorded", path)
        digest = weights_digest(ckpt)
        return {"arch": None, "kwargs": {}, "state_dict": ckpt, "digest": digest, "meta": {}}
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CKPT_KEYS):
        raise ValueError(
            f"{path} is not a robustbench_local checkpoint nor a plain state dict: expected a "
            f"dict with keys {', '.join(_CKPT_KEYS)} (write one with save_checkpoint) or "
            "parameter names mapped to tensors (torch.save(model.state_dict(), path))"
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


def _is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of parameter names to tensors (what ``model.state_dict()`` is)."""
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _describe(arch: str | None, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return f"{arch or 'an unnamed model'}({args})"


def _check_compatible(
    model: nn.Module, ckpt: Mapping[str, Any], path: Path, rebuilt: bool = False
) -> None:
    """Raise unless the checkpoint's architecture and weight shapes fit ``model``.

    ``rebuilt``: the model was built from the checkpoint's architecture (the fix is then to
    pass the keyword arguments the weights were trained with).
    """
    theirs = _describe(ckpt["arch"], ckpt["kwargs"])
    ours = _describe(getattr(model, "arch", None), getattr(model, "arch_kwargs", {}))
    model_arch = getattr(model, "arch", None)
    if model_arch is not None and ckpt["arch"] is not None and model_arch != ckpt["arch"]:
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
        fix = (
            "pass the architecture's keyword arguments the weights were trained with "
            "(load_checkpoint(path, arch=..., width=...)), or save with arch_kwargs="
            if rebuilt
            else "build the model with the checkpoint's kwargs or pass model=None"
        )
        raise ValueError(
            f"{path} holds a {theirs} whose weights do not fit the model, a {ours} "
            f"({len(diffs)} mismatches, e.g. {'; '.join(diffs[:3])}); {fix}"
        )


def _rebuild(
    ckpt: Mapping[str, Any], wanted: str | None, arch_kwargs: Mapping[str, Any], path: Path
) -> nn.Module:
    """Build the architecture a checkpoint records (or the user names), in eval mode.

    Raises:
        ValueError: No architecture known (a plain state dict without ``arch=``), one that
            is neither registered nor an import path, or kwargs that contradict the stored ones.
    """
    recorded = ckpt["arch"]
    if wanted is not None and recorded is not None and wanted != recorded:
        raise ValueError(
            f"{path} holds a {recorded!r} checkpoint but arch={wanted!r} was given; drop arch= "
            "to rebuild the recorded architecture, or load the checkpoint of a "
            f"{wanted!r}"
        )
    name = wanted or recorded
    if name is None:
        raise ValueError(
            f"{path} is a plain state dict: it records no architecture. Pass arch= (a "
            "registered name or an import path such as 'mypkg.nets:Net') with the keyword "
            "arguments that build it, or model= (the model to load the weights into)"
        )
    if not is_import_path(name) and name not in MODELS:
        raise ValueError(
            f"{path} holds an {name!r} model, which is not registered (known: "
            f"{', '.join(model_names())}). Register it (robustbench_local.models.register_model "
            "in a module imported before loading), name it by import path "
            "(arch='mypkg.nets:Net'), or build it yourself and pass model="
        )
    stored = ckpt["kwargs"]
    clash = sorted(k for k in arch_kwargs if k in stored and stored[k] != arch_kwargs[k])
    if clash:
        raise ValueError(
            f"{path} was saved with {', '.join(f'{k}={stored[k]!r}' for k in clash)} but "
            f"{', '.join(f'{k}={arch_kwargs[k]!r}' for k in clash)} was passed; drop them"
        )
    return create_model(name, **{**stored, **arch_kwargs})


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    arch: str | Callable[..., nn.Module] | None = None,
    map_location: Any = "cpu",
    **arch_kwargs: Any,
) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint`, or a plain state dict.

    Nothing in the file is run: it is read with ``torch.load(weights_only=True)`` (tensors and
    plain data only) and the code that builds the model is what the checkpoint names (a
    registered architecture or an import path) or what ``arch=`` names.

    Args:
        path: A checkpoint, or a file of ``torch.save(model.state_dict(), path)``.
        model: Load into this model (its architecture must match; its train/eval mode is
            kept). If ``None``, the architecture is built and returned in eval mode.
        arch: The architecture to build: a registered name
            (:func:`~robustbench_local.models.zoo.register_model`), an import path
            ``"mypkg.nets:Net"`` or the class. Required for a plain state dict; for a
            checkpoint it must be the one recorded (else the checkpoint is refused).
        map_location: Passed to ``torch.load``; a rebuilt model is moved there if it is a
            device or device string.
        **arch_kwargs: Keyword arguments of the architecture (added to the recorded ones,
            which they may not contradict), e.g. ``width=16``.

    Returns:
        The model, with ``checkpoint_meta`` (the stored ``meta``) and ``checkpoint_digest``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Corrupt or tampered file, a checkpoint for another architecture, a plain
            state dict without ``arch=``/``model=``, an architecture that is neither
            registered nor importable, or ``model=`` together with ``arch=``.

    Example:
        >>> torch.save(net.state_dict(), "net.pt")                     # what most users have
        >>> model = load_checkpoint("net.pt", arch="mypkg.nets:Net", width=16)
    """
    path = Path(path)
    if model is not None and (arch is not None or arch_kwargs):
        raise ValueError(
            "pass model= (the model to load into) or arch= with its keyword arguments, not both"
        )
    ckpt = _read_checkpoint(path, map_location)
    rebuilt = model is None
    if model is None:
        wanted = arch_name(arch) if arch is not None else None
        model = _rebuild(ckpt, wanted, arch_kwargs, path).eval()
        if isinstance(map_location, str | torch.device):
            model = model.to(map_location)
    _check_compatible(model, ckpt, path, rebuilt)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.checkpoint_meta = ckpt["meta"]
    model.checkpoint_digest = ckpt["digest"]
    return model


__all__ = ["FORMAT_VERSION", "arch_name", "load_checkpoint", "save_checkpoint", "weights_digest"]
