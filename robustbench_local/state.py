"""Resumable evaluation: every finished batch persisted atomically, skipped when run again.

``robustness_curve(..., state_dir=...)`` keeps one :class:`EvalState` per evaluation: a folder
with a ``manifest.json`` (the evaluation's :func:`fingerprint`: the model's weights digest, a
hash of the sample list and its first samples, the eps grid, every run's attack configuration
and the seed) and one file per finished batch in ``batches/`` (``<lo>-<hi>.pt``, the batch's
positions ``[lo, hi)`` in the fixed sample list; written through
:func:`defenses.storage.atomic_torch_save`, so a kill, SIGKILL included, leaves either the
whole batch or nothing). The same call after a kill plans its batches around the stored ones
(:func:`plan_batches`), attacks only the rest and returns the same curve; the curve's cost then
counts only what this call attacked, and an info flag ``resumed`` says how many samples came
from the state. A state written for another evaluation is refused with a message that says what
differs and what to do (:class:`StateMismatchError`).

Sharded evaluations resume too: batches are named by their global positions, each rank plans
and writes only the batches of its own slice, and rank 0 alone checks and writes the manifest
(:func:`robustbench_local.distributed.decide_once`). Keep ``state_dir`` on a file system every
rank sees.

:class:`BatchResult` is also the plain per-batch structure the evaluation gathers across ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from defenses.storage import atomic_torch_save, atomic_write_json, load_trusted
from robustbench_local.distributed import decide_once
from robustbench_local.health import Flag, passed

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
"""Bump when the stored layout changes; states of another format are refused."""
MANIFEST = "manifest.json"
BATCHES = "batches"
_BATCH_NAME = re.compile(r"^(\d+)-(\d+)\.pt$")
COST_KEYS = ("wall_time", "n_forward", "n_backward")


class StateMismatchError(ValueError):
    """A ``state_dir`` holds the state of another evaluation (or is not a state at all)."""


@dataclass
class BatchResult:
    """What one batch of an evaluation produced: the plain structure saved and gathered.

    Attributes:
        lo: Position of the batch's first sample in the fixed sample list.
        hi: One past the position of its last sample (``hi - lo`` samples).
        clean: ``bool [n]``: clean correctness.
        robust: ``label -> bool [K, n]``: robust under that run at each eps.
        cost: ``label -> {"wall_time", "n_forward", "n_backward"}`` spent on this batch.
        extra: Further per-sample tensors (last dimension ``n``) a run wants kept.
        counts: ``eps -> name -> samples`` counts of the batch (the reference's members that
            broke samples), summed over batches by :func:`add_counts`.
        resumed: True when loaded from a state rather than attacked by this call (not saved).
    """

    lo: int
    hi: int
    clean: Tensor
    robust: dict[str, Tensor]
    cost: dict[str, dict[str, float]]
    extra: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed: bool = False

    def to_record(self) -> dict[str, Any]:
        """A dict of tensors and plain numbers (loadable with ``weights_only=True``)."""
        return {
            "format": STATE_FORMAT,
            "lo": self.lo,
            "hi": self.hi,
            "clean": self.clean.cpu(),
            "robust": {k: v.cpu() for k, v in self.robust.items()},
            "cost": {k: {c: float(v.get(c, 0)) for c in COST_KEYS} for k, v in self.cost.items()},
            "extra": {k: v.cpu() for k, v in self.extra.items()},
            "counts": {k: {m: int(n) for m, n in v.items()} for k, v in self.counts.items()},
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> BatchResult:
        """Rebuild a (resumed) batch result from :meth:`to_record` output."""
        return cls(
            lo=int(rec["lo"]),
            hi=int(rec["hi"]),
            clean=rec["clean"].to(torch.bool),
            robust={k: v.to(torch.bool) for k, v in rec["robust"].items()},
            cost={k: dict(v) for k, v in rec["cost"].items()},
            extra=dict(rec.get("extra", {})),
            counts={k: dict(v) for k, v in rec.get("counts", {}).items()},
            resumed=True,
        )

    def check(self, labels: Sequence[str], n_eps: int) -> None:
        """Check the shapes and labels against the evaluation.

        Raises:
            ValueError: Another set of runs, or a matrix of the wrong shape.
        """
        n = self.hi - self.lo
        if sorted(self.robust) != sorted(labels):
            raise ValueError(f"batch [{self.lo}, {self.hi}) has runs {sorted(self.robust)}")
        bad = [k for k, v in self.robust.items() if tuple(v.shape) != (n_eps, n)]
        if bad or tuple(self.clean.shape) != (n,):
            raise ValueError(f"batch [{self.lo}, {self.hi}) has matrices of the wrong shape")


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(obj: Any) -> str:
    """An object's text without its memory address (which differs between processes)."""
    return _ADDRESS.sub("", str(obj))


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (tuples as lists, anything else as its text)."""
    return json.loads(json.dumps(value, default=_text, sort_keys=True))


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def samples_digest(total: int, indices: Tensor, first: Iterable[Tensor]) -> str:
    """sha256 of the data size, the sample list and the first samples' bytes (dtype, shape)."""
    h = hashlib.sha256(f"{int(total)}\0".encode())
    h.update(_tensor_bytes(indices.to(torch.int64)))
    for t in first:
        h.update(f"\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def fingerprint(
    model: nn.Module,
    *,
    total: int,
    indices: Tensor,
    first: Sequence[Tensor],
    eps: Sequence[float],
    configs: Mapping[str, Mapping[str, Any]],
    seed: int,
    **extra: Any,
) -> dict[str, Any]:
    """What identifies an evaluation: a stored state is reused only when all of it matches.

    Args:
        model: The evaluated model (its weights digest; a plain function by its name).
        total: Number of samples in the data set the list was drawn from.
        indices: The fixed sample list (dataset indices, in evaluation order).
        first: The global first samples' tensors (``x``, ``y``): a change of data shows there.
        eps: The eps grid.
        configs: ``label -> Attack.config()`` of every run.
        seed: The evaluation seed.
        **extra: Anything else the results depend on (JSON-able).

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
        "model": model_id,
        "samples": samples_digest(total, indices, first),
        "n_samples": int(indices.numel()),
        "eps": [float(e) for e in eps],
        "attacks": _plain(dict(configs)),
        "seed": int(seed),
        **_plain(extra),
    }


_WHAT = {
    "format": "the state format",
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

    def save(self, result: BatchResult) -> Path:
        """Persist one finished batch atomically; return its file."""
        path = self.root / BATCHES / f"{result.lo:09d}-{result.hi:09d}.pt"
        return atomic_torch_save(result.to_record(), path)

    def load(self, path: Path, labels: Sequence[str], n_eps: int) -> BatchResult:
        """Load the stored batch ``path`` and check it belongs to this evaluation.

        Raises:
            StateMismatchError: The file is unreadable or does not fit the evaluation.
        """
        try:
            result = BatchResult.from_record(load_trusted(path))
            result.check(labels, n_eps)
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


def run_plan(
    plan: Sequence[PlannedBatch],
    attack: Callable[[int, int], BatchResult],
    state: EvalState | None,
    labels: Sequence[str],
    n_eps: int,
) -> list[BatchResult]:
    """Load the stored batches of ``plan``, attack the others (saving each when it finishes)."""
    out = []
    for batch in plan:
        if batch.path is not None and state is not None:
            out.append(state.load(batch.path, labels, n_eps))
            continue
        result = attack(batch.lo, batch.hi)
        if state is not None:
            state.save(result)
        out.append(result)
    return out


def merge_parts(parts: Iterable[Sequence[BatchResult]], n: int) -> list[BatchResult]:
    """Every rank's batches in sample-list order; checks they cover ``[0, n)`` exactly once.

    Raises:
        RuntimeError: Batches overlap or leave a gap (a bug, never the user's input).
    """
    merged = sorted((r for part in parts for r in part), key=lambda r: r.lo)
    pos = 0
    for r in merged:
        if r.lo != pos:
            raise RuntimeError(f"gathered batches do not tile the sample list at position {pos}")
        pos = r.hi
    if pos != n:
        raise RuntimeError(f"gathered batches cover {pos} of {n} samples")
    return merged


def cost_of(results: Iterable[BatchResult], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Cost per run summed over the batches this call attacked (resumed ones excluded)."""
    out: dict[str, dict[str, float]] = {k: dict.fromkeys(COST_KEYS, 0.0) for k in labels}
    for r in results:
        if r.resumed:
            continue
        for label, cost in r.cost.items():
            for key in COST_KEYS:
                out[label][key] += cost.get(key, 0)
    for cost in out.values():
        cost["n_forward"], cost["n_backward"] = int(cost["n_forward"]), int(cost["n_backward"])
    return out


def add_counts(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, dict[str, int]]:
    """Sum ``key -> name -> count`` mappings (e.g. the batches' :attr:`BatchResult.counts`)."""
    out: dict[str, dict[str, int]] = {}
    for part in parts:
        for key, members in part.items():
            into = out.setdefault(key, {})
            for name, n in members.items():
                into[name] = into.get(name, 0) + int(n)
    return out


def resume_flag(results: Sequence[BatchResult], state: EvalState) -> Flag:
    """An info flag: how much of the curve came from the state (the cost excludes it)."""
    loaded = sum(r.hi - r.lo for r in results if r.resumed)
    total = sum(r.hi - r.lo for r in results)
    return passed(
        "resumed",
        f"{loaded} of {total} samples were loaded from {state.root}; the cost counts only the "
        f"{total - loaded} samples attacked by this call",
        loaded=loaded,
        total=total,
        state_dir=str(state.root),
    )


__all__ = [
    "BATCHES",
    "MANIFEST",
    "STATE_FORMAT",
    "BatchResult",
    "EvalState",
    "PlannedBatch",
    "StateMismatchError",
    "add_counts",
    "cost_of",
    "describe_mismatch",
    "fingerprint",
    "merge_parts",
    "plan_batches",
    "resume_flag",
    "run_plan",
    "samples_digest",
]
