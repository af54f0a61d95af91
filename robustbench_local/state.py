"""Resumable evaluation: every finished batch persisted atomically, skipped when run again.

Every evaluation of the engine (``robustness_curve``, ``certify``, ``corruption_curve``) given
a ``state_dir`` keeps one :class:`EvalState` there: a folder with a ``manifest.json`` (the
evaluation's :func:`fingerprint`: its kind, the model's weights digest, a hash of the sample
list and its first samples, the seed and the kind's settings, for a curve the eps grid and every
run's attack configuration) and one file per finished batch in ``batches/`` (``<lo>-<hi>.pt``,
the batch's positions ``[lo, hi)`` in the fixed sample list; written through
:func:`defenses.storage.atomic_torch_save`, so a kill, SIGKILL included, leaves either the
whole batch or nothing). The same call after a kill plans its batches around the stored ones
(:func:`plan_batches`), evaluates only the rest and returns the same result; its cost then
counts only what this call computed, and an info flag ``resumed`` says how many samples came
from the state. A state written for another evaluation is refused with a message that says what
differs and what to do (:class:`StateMismatchError`).

Sharded evaluations resume too: batches are named by their global positions, each rank plans
and writes only the batches of its own slice, and rank 0 alone checks and writes the manifest
(:func:`robustbench_local.distributed.decide_once`). Keep ``state_dir`` on a file system every
rank sees.

This module only stores: it never calls back into an evaluation. The loop that plans, runs,
saves and gathers batches is :func:`robustbench_local.engine.run_evaluation`; a
:class:`BatchRecord` is the one per-batch type it saves here and gathers across ranks.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from attacks.result import Cost
from defenses.storage import atomic_torch_save, atomic_write_json, load_trusted
from robustbench_local.distributed import decide_once
from robustbench_local.utils import plain, samples_digest

logger = logging.getLogger(__name__)

STATE_FORMAT = 2
"""Bump when the stored layout changes; states of another format are refused."""
MANIFEST = "manifest.json"
BATCHES = "batches"
_BATCH_NAME = re.compile(r"^(\d+)-(\d+)\.pt$")


class StateMismatchError(ValueError):
    """A ``state_dir`` holds the state of another evaluation (or is not a state at all)."""


@dataclass(frozen=True)
class BatchRecord:
    """What one batch of an evaluation produced: the one per-batch type, saved and gathered.

    Attributes:
        lo: Position of the batch's first sample in the fixed sample list.
        hi: One past the position of its last sample (``hi - lo`` samples).
        samples: ``name -> tensor`` of per-sample results, last dimension ``hi - lo`` (CPU).
        cost: ``row -> Cost`` spent on this batch.
        counts: ``key -> name -> count`` tallies of the batch (e.g. the reference's
            ``broken_by``), summed over batches by the engine.
        resumed: True when loaded from a state rather than computed by this call (not saved).
    """

    lo: int
    hi: int
    samples: dict[str, Tensor]
    cost: dict[str, Cost] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed: bool = False

    @property
    def n(self) -> int:
        """Number of samples in the batch."""
        return self.hi - self.lo

    def to_record(self) -> dict[str, Any]:
        """A dict of tensors and plain numbers (loadable with ``weights_only=True``)."""
        return {
            "format": STATE_FORMAT,
            "lo": self.lo,
            "hi": self.hi,
            "samples": {k: v.cpu() for k, v in self.samples.items()},
            "cost": {k: Cost.of(v).to_dict() for k, v in self.cost.items()},
            "counts": {k: {m: int(n) for m, n in v.items()} for k, v in self.counts.items()},
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> BatchRecord:
        """Rebuild a (resumed) batch record from :meth:`to_record` output."""
        if rec.get("format") != STATE_FORMAT:
            raise ValueError(f"state format {rec.get('format')!r}, expected {STATE_FORMAT}")
        return cls(
            lo=int(rec["lo"]),
            hi=int(rec["hi"]),
            samples=dict(rec["samples"]),
            cost={k: Cost.of(v) for k, v in rec["cost"].items()},
            counts={k: dict(v) for k, v in rec.get("counts", {}).items()},
            resumed=True,
        )

    def check(self, rows: Sequence[str], shapes: Mapping[str, tuple[int, ...]] | None) -> None:
        """Check the record against its evaluation: its rows and per-sample shapes.

        Args:
            rows: The evaluation's rows (the record's cost must have exactly these).
            shapes: ``name -> shape`` every sample tensor must have (None: only the last
                dimension, ``hi - lo``, is checked).

        Raises:
            ValueError: Another set of rows or samples, or a tensor of the wrong shape.
        """
        where = f"batch [{self.lo}, {self.hi})"
        if sorted(self.cost) != sorted(rows):
            raise ValueError(f"{where} has runs {sorted(self.cost)}, expected {sorted(rows)}")
        if shapes is not None and sorted(self.samples) != sorted(shapes):
            raise ValueError(f"{where} has results {sorted(self.samples)}")
        for name, t in self.samples.items():
            want = shapes[name] if shapes is not None else (*t.shape[:-1], self.n)
            if tuple(t.shape) != tuple(want) or (t.ndim and t.shape[-1] != self.n):
                raise ValueError(f"{where} has matrices of the wrong shape ({name})")


def fingerprint(
    model: nn.Module,
    *,
    kind: str,
    total: int,
    indices: Tensor,
    first: Sequence[Tensor],
    seed: int,
    config: Mapping[str, Any],
) -> dict[str, Any]:
    """What identifies an evaluation: a stored state is reused only when all of it matches.

    Args:
        model: The evaluated model (its weights digest; a plain function by its name).
        kind: The kind of evaluation (``"attacks"``, ``"certify"``, ``"corruptions"``...).
        total: Number of samples in the data set the list was drawn from.
        indices: The fixed sample list (dataset indices, in evaluation order).
        first: The global first samples' tensors (``x``, ``y``): a change of data shows there.
        seed: The evaluation seed.
        config: The kind's settings (``Evaluation.config()``; a curve's ``eps`` and
            ``attacks``), merged in at the top level.

    Returns:
        A JSON-able dict.
    """
    from robustbench_local.models import weights_digest

    if isinstance(model, nn.Module):
        model_id = weights_digest(model)
    else:
        model_id = f"callable:{getattr(model, '__qualname__', type(model).__qualname__)}"
    return {
        "format": STATE_FORMAT,
        "kind": str(kind),
        "model": model_id,
        "samples": samples_digest(total, indices, first),
        "n_samples": int(indices.numel()),
        "seed": int(seed),
        **plain(dict(config)),
    }


_WHAT = {
    "format": "the state format",
    "kind": "the kind of evaluation",
    "model": "the model (weights digest)",
    "samples": "the data selection (sample-list hash: another data set, n_examples or seed)",
    "n_samples": "the number of samples",
    "eps": "the eps grid",
    "attacks": "the attack configuration",
    "seed": "the seed",
}


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 64:
        text = value[:12] + "..."
    return text if len(text) <= width else text[: width - 3] + "..."


def _config_diff(stored: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """Which runs differ, and in which settings (``pgd.steps: stored 10, now 20``)."""
    parts = []
    for label in sorted(set(stored) | set(now)):
        a, b = stored.get(label), now.get(label)
        if a == b:
            continue
        if a is None or b is None:
            parts.append(f"run {label!r} {'added' if a is None else 'removed'}")
            continue
        if not (isinstance(a, dict) and isinstance(b, dict)):
            parts.append(f"run {label!r}: stored {_short(a)}, now {_short(b)}")
            continue
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        parts += [f"{label}.{k}: stored {_short(a.get(k))}, now {_short(b.get(k))}" for k in keys]
    return "; ".join(parts)


def describe_mismatch(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """One phrase per field that differs between two fingerprints."""
    out = []
    for key in sorted(set(stored) | set(now), key=lambda k: (k not in _WHAT, k)):
        a, b = stored.get(key), now.get(key)
        if a == b:
            continue
        what = _WHAT.get(key, f"{key!r}")
        if key == "attacks" and isinstance(a, dict) and isinstance(b, dict):
            out.append(f"{what} differs: {_config_diff(a, b)}")
        else:
            out.append(f"{what} differs (stored {_short(a)}, now {_short(b)})")
    return out


def _open_manifest(root: Path, fp: Mapping[str, Any]) -> bool:
    """Check ``root``'s manifest against ``fp`` (or write it); True if it existed.

    Raises:
        StateMismatchError: Another evaluation's state, or a folder that is no state.
    """
    manifest = root / MANIFEST
    if not manifest.exists():
        if root.exists() and any(root.iterdir()):
            raise StateMismatchError(
                f"state_dir {root} is not empty and holds no evaluation state ({MANIFEST} is "
                "missing): pass a new or empty folder as state_dir"
            )
        atomic_write_json(manifest, {"fingerprint": dict(fp)})
        return False
    try:
        stored = json.loads(manifest.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StateMismatchError(
            f"cannot read {manifest} ({err}); delete {root} to start the evaluation over"
        ) from err
    diffs = describe_mismatch(stored, fp)
    if diffs:
        raise StateMismatchError(
            f"state_dir {root} holds the state of another evaluation: {'; '.join(diffs)}. "
            "Resuming would mix the results of two evaluations: pass a new state_dir for this "
            f"one, or delete {root} to start it over"
        )
    return True


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of a rank's slice: positions ``[lo, hi)`` and its stored file, if finished."""

    lo: int
    hi: int
    path: Path | None = None


class EvalState:
    """The persisted finished batches of one evaluation (see the module docstring).

    Use :meth:`open`; it checks (or writes) the manifest once, on rank 0.
    """

    def __init__(self, root: Path, fp: Mapping[str, Any]) -> None:
        self.root = root
        self.fingerprint = dict(fp)

    @classmethod
    def open(cls, state_dir: str | os.PathLike[str], fp: Mapping[str, Any]) -> EvalState:
        """Open (or create) the state of the evaluation ``fp`` in ``state_dir``.

        Raises:
            StateMismatchError: ``state_dir`` holds another evaluation's state (the message
                says what differs) or is a non-empty folder that is no state.
        """
        root = Path(state_dir).expanduser().resolve()
        existed = decide_once(_open_manifest, root, fp)
        (root / BATCHES).mkdir(parents=True, exist_ok=True)
        logger.info("evaluation state %s (%s)", root, "resuming" if existed else "new")
        return cls(root, fp)

    def stored(self) -> dict[tuple[int, int], Path]:
        """``(lo, hi) -> file`` of every finished batch (temporary files are ignored)."""
        out = {}
        for p in (self.root / BATCHES).iterdir():
            m = _BATCH_NAME.match(p.name)
            if m:
                out[int(m.group(1)), int(m.group(2))] = p
        return out

    def save(self, result: BatchRecord) -> Path:
        """Persist one finished batch atomically; return its file."""
        path = self.root / BATCHES / f"{result.lo:09d}-{result.hi:09d}.pt"
        return atomic_torch_save(result.to_record(), path)

    def load(
        self,
        path: Path,
        rows: Sequence[str],
        shapes: Mapping[str, tuple[int, ...]] | None = None,
    ) -> BatchRecord:
        """Load the stored batch ``path`` and check it belongs to this evaluation.

        Args:
            path: A file of :meth:`stored`.
            rows: The evaluation's rows.
            shapes: ``name -> shape`` of the batch's per-sample tensors, if the evaluation
                knows them (see :meth:`BatchRecord.check`).

        Raises:
            StateMismatchError: The file is unreadable or does not fit the evaluation.
        """
        try:
            result = BatchRecord.from_record(load_trusted(path))
            result.check(rows, shapes)
        except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, ValueError, KeyError,
                AttributeError) as err:  # fmt: skip
            raise StateMismatchError(
                f"{path} is corrupt or from another evaluation ({err}); delete it (or "
                f"{self.root}) and run again"
            ) from err
        return result


def plan_batches(
    lo: int, hi: int, batch_size: int, state: EvalState | None = None
) -> list[PlannedBatch]:
    """The batches of the slice ``[lo, hi)``: stored ones where they fit, new ones between.

    Walking from ``lo``: a stored batch that starts here and ends inside the slice is reused;
    otherwise a new batch runs up to ``batch_size`` samples, the next stored batch or ``hi``.
    With the batch size of the interrupted run this reproduces its batches exactly.
    """
    stored = state.stored() if state is not None else {}
    starts: dict[int, tuple[int, Path]] = {}
    for (a, b), path in stored.items():
        if lo <= a < b <= hi and b > starts.get(a, (a, path))[0]:
            starts[a] = (b, path)
    plan, pos = [], lo
    while pos < hi:
        if pos in starts:
            end, path = starts[pos]
            plan.append(PlannedBatch(pos, end, path))
        else:
            nxt = min([s for s in starts if s > pos], default=hi)
            end = min(pos + batch_size, nxt, hi)
            plan.append(PlannedBatch(pos, end))
        pos = end
    return plan


__all__ = [
    "BATCHES",
    "MANIFEST",
    "STATE_FORMAT",
    "BatchRecord",
    "EvalState",
    "PlannedBatch",
    "StateMismatchError",
    "describe_mismatch",
    "fingerprint",
    "plan_batches",
]
