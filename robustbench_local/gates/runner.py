"""The deterministic gate runner and its health policy.

:func:`run_gate` draws the spec's fixed, hashed sample list, evaluates the model in fp32 eval
mode under fixed seeds with the robustness curve (the reference suite and the health checks
included), and turns the per-sample worst case of the attack *and the reference* into a
:class:`GateResult` (the attack's own outcomes are kept beside it). A gate whose checks flag
gradient masking or non-determinism gets a refusal unless its spec opts in.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from defenses.data import tensors_of
from robustbench_local.checks import GRADIENT_MASKING_FLAGS, NONDETERMINISM_FLAGS
from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.results import GateResult, make_rows
from robustbench_local.gates.spec import GateSpec
from robustbench_local.health import Flag
from robustbench_local.utils import plain, sample_list_hash

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    from attacks.base import Attack
    from defenses.data import DataLike
    from robustbench_local.evaluate import Curve


def load_split(
    dataset: str, split: str = "test", data_dir: str | os.PathLike[str] | None = None
) -> DataLike:
    """The ``split`` of a ``robustbench_local`` dataset (``data_dir`` or its env variable)."""
    from robustbench_local.data import load_dataset

    train, test = load_dataset(dataset, data_dir=data_dir)
    return test if split == "test" else train


def select_samples(spec: GateSpec, data: DataLike) -> tuple[Tensor, Tensor, list[int]]:
    """The spec's fixed sample list: ``(x, y, indices)`` with ``sample_indices(N, n, seed)``.

    Raises:
        GateConfigError: ``n_examples`` is larger than the split.
    """
    from robustbench_local.data import sample_indices

    x, y = tensors_of(data)
    total = int(x.shape[0])
    if spec.n_examples > total:
        raise GateConfigError(
            f"n_examples={spec.n_examples} is larger than the {spec.dataset} {spec.split} split "
            f"({total} samples): lower n_examples (or --robustness-n-examples) to at most {total}"
        )
    idx = sample_indices(total, spec.n_examples, spec.seed)
    return x[idx].float(), y[idx].long(), [int(i) for i in idx.tolist()]


def build_attack(spec: GateSpec) -> Attack:
    """The spec's attack, seeded, in eval mode.

    Raises:
        GateConfigError: Unknown attack name or arguments it does not accept.
    """
    import attacks

    kwargs = dict(spec.attack_kwargs)
    if spec.norm is not None:
        kwargs["norm"] = spec.norm
    try:
        return attacks.create(spec.attack, seed=spec.seed, eval_mode=True, **kwargs)
    except (TypeError, ValueError) as err:
        raise GateConfigError(f"cannot build attack {spec.attack!r} with {kwargs}: {err}") from err


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch, enable deterministic algorithms; restore the RNG state and flags on exit."""
    import torch

    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@contextlib.contextmanager
def gate_model(
    model: nn.Module, device: str | None = None
) -> Iterator[tuple[nn.Module, torch.device]]:
    """The model as a gate evaluates it: fp32, eval mode, on ``device`` (default: its own).

    A model with non-fp32 weights is evaluated as an fp32 copy. Training flags and the device
    are restored on exit.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
    """
    import torch
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"a robustness gate checks a torch.nn.Module, got {type(model).__name__}")
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    target = torch.device(device) if device else home
    net = model
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        net = copy.deepcopy(model).float()
    modes = [(m, m.training) for m in net.modules()]
    net.to(target).eval()
    try:
        yield net, target
    finally:
        for m, mode in modes:
            m.training = mode
        if net is model and target != home:
            model.to(home)


def build_reference(spec: GateSpec, attack: Attack) -> Any:
    """The ``reference`` argument of the gate's curve (a reduced suite for a mapping).

    Raises:
        GateConfigError: Reduced settings the suite does not accept.
    """
    from robustbench_local.reference import reference_from_config

    try:
        return reference_from_config(spec.reference, attack.norm.value, spec.seed, attack.bounds)
    except (TypeError, ValueError) as err:
        raise GateConfigError(f"cannot build reference {spec.reference!r}: {err}") from err


def run_gate(
    spec: GateSpec,
    model: nn.Module,
    *,
    data: DataLike | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    gate_id: str | None = None,
) -> GateResult:
    """Evaluate ``model`` under ``spec`` deterministically and compute its verdict.

    Args:
        spec: The gate.
        model: A classifier taking inputs in [0, 1] and returning logits.
        data: The split to sample from (TensorDataset or ``(x, y)``); default: load
            ``spec.dataset`` / ``spec.split`` from ``data_dir``.
        data_dir: Dataset mirror folder (default: ``ROBUSTBENCH_LOCAL_DATA_DIR``).
        device: Where to evaluate (default: the model's device).
        gate_id: Key for baselines and reports (default: ``spec.name``).

    Returns:
        A :class:`GateResult` (no baseline comparison yet; see
        :func:`~robustbench_local.gates.baseline.compare_to_baseline`).
    """
    from robustbench_local.evaluate import robustness_curve
    from robustbench_local.models import weights_digest

    start = time.perf_counter()
    split = data if data is not None else load_split(spec.dataset, spec.split, data_dir)
    x, y, indices = select_samples(spec, split)
    attack = build_attack(spec)
    reference = build_reference(spec, attack)
    with gate_model(model, device) as (net, dev), deterministic(spec.seed):
        curve = robustness_curve(
            net, (x.to(dev), y.to(dev)), [attack], list(spec.eps),
            seed=spec.seed, device=dev, checks=True, progress=False, reference=reference,
        )  # fmt: skip
        digest = weights_digest(net)
    rows_at = _eps_rows(curve, spec)
    outcomes = _outcomes(curve.worst_case_robust(), rows_at)
    attack_outcomes = _outcomes(curve.chosen_worst_case_robust(), rows_at)
    ran = curve.ran(curve.reference_label) if curve.reference_label else None
    result = GateResult(
        gate_id=gate_id or spec.name,
        spec=spec,
        rows=make_rows(
            spec,
            outcomes,
            attack_outcomes,
            [bool(ran[k]) for k in rows_at] if ran is not None else None,
        ),
        outcomes=outcomes,
        attack_outcomes=attack_outcomes,
        clean_correct=[bool(v) for v in curve.clean_correct.tolist()],
        indices=indices,
        sample_hash=sample_list_hash(spec.dataset, spec.split, indices),
        model_digest=digest,
        attack_config=attack_config(attack, spec, curve),
        reference=_reference_summary(curve),
        wall_time=time.perf_counter() - start,
    )
    apply_health(result, curve.health)
    return result


def attack_config(attack: Attack, spec: GateSpec, curve: Curve | None = None) -> dict[str, Any]:
    """What a baseline must match: the attack, the reference, the eps grid and the mode."""
    cfg: dict[str, Any] = {
        "attack": attack.config(),
        "eps": list(spec.eps),
        "fp32": True,
        "adaptive": "auto",
        "reference": _reference_config(spec, curve),
    }
    return plain(cfg)


def _reference_config(spec: GateSpec, curve: Curve | None) -> dict[str, Any]:
    """The reference's part of the attack config: its mode, where it ran and its settings."""
    from robustbench_local.reference import SUITE_VERSION

    ref = None if curve is None else curve.reference
    out: dict[str, Any] = {"setting": spec.reference, "suite_version": SUITE_VERSION}
    if ref is not None:
        out |= {"mode": ref.mode, "reduced": ref.reduced, "ran": ref.ran, "config": ref.config}
    return out


def _reference_summary(curve: Curve) -> dict[str, Any]:
    """What the report says about the reference: mode, reduced, where it ran, what it broke."""
    ref = curve.reference
    if ref is None or ref.mode == "off":
        return {"mode": "off"}
    eps = [float(e) for e, r in zip(curve.eps.tolist(), ref.ran, strict=True) if r]
    return {
        "mode": ref.mode,
        "reduced": ref.reduced,
        "shared": ref.shared,
        "eps": eps,
        "model": ref.model,
        "broken_by": ref.broken_by,
    }


def _eps_rows(curve: Curve, spec: GateSpec) -> list[int]:
    """The curve's row index of every spec eps."""
    curve_eps = [float(e) for e in curve.eps.tolist()]
    out = []
    for e in spec.eps:
        k = min(range(len(curve_eps)), key=lambda i: abs(curve_eps[i] - e))
        if not math.isclose(curve_eps[k], e, rel_tol=1e-6, abs_tol=1e-9):
            raise RuntimeError(f"the robustness curve has no row for eps={e} (has {curve_eps})")
        out.append(k)
    return out


def _outcomes(robust: Tensor, rows: Sequence[int]) -> list[list[bool]]:
    """Per-sample outcomes ``[len(rows)][N]`` of a ``bool [K, N]`` matrix."""
    return [[bool(v) for v in robust[k].tolist()] for k in rows]


# --------------------------------------------------------------------------------------------
# Health policy
# --------------------------------------------------------------------------------------------


def apply_health(result: GateResult, flags: Sequence[Flag]) -> None:
    """Record health flags; masking or non-determinism flags become refusals unless allowed."""
    result.health = [plain(f.to_dict()) for f in flags]
    for f in result.health:
        if f["ok"] or f.get("severity") == "info":
            continue
        text = f"{f['name']}: {f.get('message') or ''}".strip()
        if f.get("advice"):
            text += f" ({f['advice']})"
        if f["name"] in GRADIENT_MASKING_FLAGS:
            _refuse_or_note(
                result, result.spec.allow_masking, "gradient masking", "allow_masking", text
            )
        elif f["name"] in NONDETERMINISM_FLAGS:
            allowed = result.spec.allow_nondeterminism
            _refuse_or_note(result, allowed, "non-determinism", "allow_nondeterminism", text)
        else:
            result.notes.append(f"health warning {text}")


def _refuse_or_note(result: GateResult, allowed: bool, what: str, opt: str, text: str) -> None:
    if allowed:
        result.notes.append(f"{what} flagged but accepted ({opt}=True): {text}")
    else:
        result.refusals.append(
            f"{what} flagged, so the measured robust accuracy cannot be trusted: {text}. "
            f"Fix the model or evaluation, or opt in explicitly with {opt}=True."
        )


__all__ = [
    "apply_health",
    "attack_config",
    "build_attack",
    "build_reference",
    "deterministic",
    "gate_model",
    "load_split",
    "run_gate",
    "sample_list_hash",
    "select_samples",
]
