"""Low-level helpers with one home each: digests of data and sample lists, JSON normalisation.

This module imports nothing from the project (only the standard library and torch), so every
part of ``robustbench_local`` and ``experiments`` may import it without a cycle, in the manner
of scikit-learn's ``utils``.

- :func:`tensor_digest`: sha256 of tensors' bytes (the exact data a run evaluated);
- :func:`samples_digest`: sha256 of a sample list with the data size and its first samples
  (identifies an evaluation's data selection in a resumable state);
- :func:`sample_list_hash`: sha256 of a named split's sample list (the gates' baselines);
- :func:`plain`: a value as plain JSON types, so configurations compare and round-trip;
- :func:`callable_module`: a module callable as the function of the same name.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor (CPU, contiguous; empty for an empty tensor)."""
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_digest(*tensors: Tensor) -> str:
    """sha256 hex of the tensors' bytes, in order (identifies the exact data evaluated)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_bytes(t))
    return h.hexdigest()


def samples_digest(total: int, indices: Tensor, first: Iterable[Tensor]) -> str:
    """sha256 hex of the data size, the sample list and the first samples (dtype, shape, bytes).

    A change of data set, of ``n_examples`` or of the selection seed shows in the sample list; a
    change of the data behind the same indices shows in the first samples.
    """
    h = hashlib.sha256(f"{int(total)}\0".encode())
    h.update(tensor_bytes(indices.to(torch.int64)))
    for t in first:
        h.update(f"\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def sample_list_hash(dataset: str, split: str, indices: Sequence[int] | Iterable[int]) -> str:
    """sha256 hex of ``"<dataset>:<split>:<i0>,<i1>,..."``: identifies a named split's samples."""
    text = f"{dataset}:{split}:" + ",".join(str(int(i)) for i in indices)
    return hashlib.sha256(text.encode()).hexdigest()


def _text(obj: Any) -> str:
    """An object's text without its memory address (which differs between processes)."""
    return _ADDRESS.sub("", str(obj))


def plain(value: Any) -> Any:
    """``value`` as plain JSON types: tuples become lists, other objects their text.

    Memory addresses are dropped from that text, so two processes normalise the same
    configuration to the same value (state fingerprints, shared-reference detection).
    """
    return json.loads(json.dumps(value, default=_text, sort_keys=True))


def callable_module(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``function``.

    The package exports functions named like some of its modules (``rbl.benchmark`` in
    ``robustbench_local/benchmark.py``, ``rbl.certify`` in ``robustbench_local/certify/``).
    Once such a module is imported, Python binds the package attribute to the module, so
    ``rbl.benchmark`` is the module; a callable module keeps ``rbl.benchmark(model, ...)``
    working whichever of the two the attribute holds, and ``from ... import`` of the module's
    other names keeps working too.
    """
    module = sys.modules[module_name]

    def call(_module: types.ModuleType, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    module.__class__ = type(
        "CallableModule", (types.ModuleType,), {"__call__": call, "__doc__": module.__doc__}
    )


__all__ = [
    "callable_module",
    "plain",
    "sample_list_hash",
    "samples_digest",
    "tensor_bytes",
    "tensor_digest",
]
