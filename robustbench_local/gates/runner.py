"""The deterministic gate runner and its health policy.

:func:`gate_data` resolves the gate's data (any data spec, or data given in memory) and
:func:`run_gate` draws the spec's fixed, hashed sample list, evaluates the model in fp32 eval
mode under fixed seeds with the robustness curve (the reference suite and the health checks
included), and turns the per-sample worst case of the attack *and the reference* into a
:class:`GateResult` (the attack's own outcomes are kept beside it). A gate whose checks flag
gradient masking or non-determinism gets a refusal unless its spec opts in.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_local.checks import GRADIENT_MASKING_FLAGS, NONDETERMINISM_FLAGS
from robustbench_local.gates import axes
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


IN_MEMORY = "data passed to check()"
"""How reports name data given to ``check(model, data=...)`` as arrays or a Dataset."""


@dataclass(frozen=True)
class GateData:
    """The split a gate samples from, and how baselines and reports name it.

    Attributes:
        data: The split's ``(x, y)`` tensors, dtypes as they came (the curve's input checks
            judge them: uint8 or float64 images and float labels get their own messages).
        key: What the sample-list hash names: a registered dataset's name, or
            ``sha256:<digest>`` of the user's data (so a baseline follows the data, not its path).
        label: How messages and reports call the data (the spec as written, or
            ``data passed to check()``).
    """

    data: tuple[Tensor, Tensor]
    key: str
    label: str

    @property
    def size(self) -> int:
        """The number of samples in the split."""
        return int(self.data[0].shape[0])


def gate_data(
    spec: GateSpec,
    data: Any = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> GateData:
    """The gate's split: ``data`` when given, else the spec's ``dataset`` and ``split``.

    Args:
        spec: The gate (its ``dataset`` is any data spec of
            :func:`robustbench_local.load_dataset`: a registered name, an image folder, an
            ``.npz``/``.pt`` file or ``module:function``).
        data: Data given to ``check(model, data=...)``: a data spec (its ``spec.split`` is
            used), or ``(x, y)`` tensors or numpy arrays, or a Dataset (the split itself).
        data_dir: Mirror of the registered datasets.
        root: Folder that relative paths are relative to (the gate file's or test file's).

    Raises:
        GateConfigError: ``split: train`` of data without a training split.
        ValueError, FileNotFoundError: A spec that does not resolve, or unreadable data.
        TypeError: ``data`` is neither a spec nor data.
    """
    from robustbench_local.inputs import eval_tensors
    from robustbench_local.utils import tensor_digest

    source = spec.dataset if data is None else data
    if isinstance(source, str | os.PathLike):
        return _spec_split(source, spec.split, data_dir, root)
    x, y = eval_tensors(source)
    return GateData((x, y), f"sha256:{tensor_digest(x, y)}", IN_MEMORY)


def _spec_split(
    source: str | os.PathLike[str],
    split: str,
    data_dir: str | os.PathLike[str] | None,
    root: str | os.PathLike[str] | None,
) -> GateData:
    """One split of a data spec, keyed by name (registered) or by the data's digest.

    Raises:
        GateConfigError: ``split="train"`` of data without a training split.
    """
    from robustbench_local.data import resolve_dataset
    from robustbench_local.utils import tensor_digest

    resolved = resolve_dataset(source, data_dir, root=root)
    part = resolved.test
    if split == "train":
        try:
            part = resolved.require_train(f"a gate on split: train of {os.fspath(source)!r}")
        except ValueError as err:
            raise GateConfigError(str(err)) from None
    x, y = part.tensors[:2]
    key = str(source) if resolved.kind == "registered" else f"sha256:{tensor_digest(x, y)}"
    return GateData((x, y), key, os.fspath(source))


def load_split(
    dataset: str, split: str = "test", data_dir: str | os.PathLike[str] | None = None
) -> DataLike:
    """The ``split`` of a data spec (a registered name, a folder, a file, ``module:function``)."""
    return _spec_split(dataset, split, data_dir, None).data


def select_samples(spec: GateSpec, data: GateData | DataLike) -> tuple[Tensor, Tensor, list[int]]:
    """The spec's fixed sample list: ``(x, y, indices)`` with ``sample_indices(N, n, seed)``.

    The samples keep their dtypes: the robustness curve's input checks explain uint8 images,
    float64 inputs or float labels, where a cast here would hide them.

    Raises:
        GateConfigError: ``n_examples`` is larger than the split.
    """
    from robustbench_local.data import sample_indices
    from robustbench_local.inputs import eval_tensors

    gd = data if isinstance(data, GateData) else None
    x, y = gd.data if gd is not None else eval_tensors(data)
    total = int(x.shape[0])
    if spec.n_examples > total:
        what = f"the {spec.dataset} {spec.split} split" if gd is None else _split_name(spec, gd)
        raise GateConfigError(
            f"n_examples={spec.n_examples} is larger than {what} ({total} samples): lower "
            f"n_examples (or --robustness-n-examples) to at most {total}"
        )
    idx = sample_indices(total, spec.n_examples, spec.seed)
    return x[idx], y[idx], [int(i) for i in idx.tolist()]


def _split_name(spec: GateSpec, data: GateData) -> str:
    """``the mnist test split``, or ``the data passed to check()``."""
    if data.key.startswith("sha256:") and data.label == IN_MEMORY:
        return f"the {IN_MEMORY}"
    return f"the {data.label} {spec.split} split"


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
        ValueError: A device that is not here (e.g. ``cuda`` without CUDA).
    """
    import torch
    from torch import nn

    from robustbench_local.inputs import resolve_device

    if not isinstance(model, nn.Module):
        raise TypeError(f"a robustness gate checks a torch.nn.Module, got {type(model).__name__}")
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    target = resolve_device(device, model)
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
    data: GateData | Any = None,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    gate_id: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> GateResult:
    """Evaluate ``model`` under ``spec`` deterministically and compute its verdict.

    Args:
        spec: The gate.
        model: A classifier taking inputs in [0, 1] and returning logits.
        data: The split to sample from: a :class:`GateData`, a data spec, ``(x, y)`` tensors
            or numpy arrays, or a Dataset; default: ``spec.dataset`` / ``spec.split``.
        data_dir: Dataset mirror folder (default: ``ROBUSTBENCH_LOCAL_DATA_DIR``).
        device: Where to evaluate (default: the model's device).
        gate_id: Key for baselines and reports (default: ``spec.name``).
        root: Folder that relative data paths are relative to (default: the working directory).

    Returns:
        A :class:`GateResult` (no baseline comparison yet; see
        :func:`~robustbench_local.gates.baseline.compare_to_baseline`). Its spec names the data
        the gate ran on (``data passed to check()`` for data given in memory).

    Raises:
        GateConfigError: An attack or reference that cannot be built, or too few samples.
        ValueError: Data or a device the evaluation cannot use (the input checks of
            :func:`robustbench_local.inputs.check_eval_inputs`: the message says what to do).
    """
    from robustbench_local.evaluate import robustness_curve
    from robustbench_local.models import weights_digest

    start = time.perf_counter()
    attack = build_attack(spec)
    split = data if isinstance(data, GateData) else gate_data(spec, data, data_dir=data_dir,
                                                                root=root)  # fmt: skip
    if split.label != spec.dataset:
        spec = dataclasses.replace(spec, dataset=split.label)
    x, y, indices = select_samples(spec, split)
    reference = build_reference(spec, attack)
    with gate_model(model, device) as (net, dev), deterministic(spec.seed):
        curve = robustness_curve(
            net, (x.to(dev), y.to(dev)), [attack], list(spec.eps),
            seed=spec.seed, device=dev, checks=True, progress=False, reference=reference,
            certify=axes.certify_argument(spec),
        )  # fmt: skip
        corruptions = axes.corruption_curve(spec, net, x.to(dev), y.to(dev), dev)
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
        sample_hash=sample_list_hash(split.key, spec.split, indices),
        model_digest=digest,
        attack_config=attack_config(attack, spec, curve),
        reference=_reference_summary(curve),
        wall_time=time.perf_counter() - start,
    )
    axes.add_axes(result, curve, corruptions)
    apply_health(result, [*curve.health, *axes.axis_flags(curve, corruptions)])
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
    """Record health flags; masking or non-determinism flags become refusals unless allowed.

    A failed ``certificate_violated`` flag (a certified sample broken by an attack) is an
    error: the gate fails, with no option to accept it.
    """
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
        elif f["name"] == axes.CERTIFICATE_VIOLATED:
            result.errors.append(axes.certificate_error(text))
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
    "GateData",
    "apply_health",
    "attack_config",
    "build_attack",
    "build_reference",
    "deterministic",
    "gate_data",
    "gate_model",
    "load_split",
    "run_gate",
    "sample_list_hash",
    "select_samples",
]
