"""Atomic file writes: a reader never sees a half-written checkpoint, card, report or download.

Every write goes to a temporary file in the destination's folder, is flushed to disk, and is
renamed over the destination only when it completed; on any error the temporary file is
removed and the destination is left as it was. This is the one implementation the project
uses (trainer checkpoints, model checkpoints, model cards, gate baselines and reports, dataset
downloads, evaluation state).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

FILE_MODE = 0o644  # mkstemp creates 0600; caches and run folders may be shared


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; rename it over ``path`` when the block succeeds.

    Args:
        path: The destination (its folder is created if needed).
        mode: ``"wb"`` (default) or ``"w"``.
        encoding: Text encoding for ``mode="w"`` (default UTF-8).

    Yields:
        The open temporary file. Raising inside the block discards it.

    Raises:
        ValueError: ``mode`` is not a write mode.

    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        text = mode == "w"
        with os.fdopen(fd, mode, encoding=(encoding or "utf-8") if text else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(FILE_MODE)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], doc: Any, *, indent: int | None = 1) -> Path:
    """Write ``doc`` as JSON (with a final newline) to ``path`` atomically; return the path."""
    return atomic_write_text(path, json.dumps(doc, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` atomically; return the path."""
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return Path(path)


def load_trusted(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """Load a torch file with ``weights_only=True``: tensors and plain data, never code."""
    return torch.load(path, map_location=map_location, weights_only=True)


__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "load_trusted",
]
