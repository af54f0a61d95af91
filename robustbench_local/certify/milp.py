"""Exact verification of small ReLU networks as mixed-integer linear programs: ``"milp"``.

Tjeng, Xiao & Tedrake (2019): a feed-forward ReLU network over an linf ball intersected with the
input box is encoded exactly with one binary variable per unstable ReLU. With pre-activation
bounds ``l < 0 < u`` from CROWN (or IBP), ``a = relu(z)`` is

    a >= 0,  a >= z,  a <= u * d,  a <= z - l * (1 - d),  d in {0, 1}

and stable neurons are linear (``a = z`` or ``a = 0``). For every other class ``j`` the program
minimises the margin ``logit_y - logit_j``; the sample is robust at ``eps`` when every minimum
is above ``tolerance``. Programs are solved with SciPy's HiGHS (``scipy.optimize.milp``), in
float64, under a ``time_limit`` per sample and eps. Three outcomes per sample and eps:

- robust (``1``): every margin proven positive (the solver's dual bound above ``tolerance``);
- counterexample (``-1``): a point of the ball the model (the original, in its own dtype)
  really classifies as another class, returned in ``extra["counterexample"]``; a solver point
  that does not change the class in a forward pass is not one;
- unknown (``0``): neither within the time limit (never counted certified).

Margins CROWN already proves are not solved again (``presolve=True``); set ``presolve=False``
to check the other methods against an independent proof. Networks: chains of affine layers
(Linear, Conv2d, BatchNorm in eval, average pooling, normalisation, flatten) and ReLUs; the
affine layers between two ReLUs are merged into one sparse matrix. linf only (an l2 ball is
not a linear constraint). Like any time-limited solver, an outcome can depend on the machine's
speed when a program runs close to its limit.

References:
    Tjeng, Xiao & Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
    Programming", ICLR 2019, arXiv:1711.07356.
    Huangfu & Hall, "Parallelizing the dual revised simplex method", Math. Prog. Comp. 2018
    (HiGHS).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import Tensor, nn

import attacks
from attacks.result import Cost
from attacks.validation import check_bool, check_choice, check_number, check_positive_int
from defenses.bound_graph import BoundGraph, check_bounded_model, numel
from defenses.bound_ops import BoundOp, Interval, ReLUOp
from defenses.bounds import BoundedModel, Perturbation
from robustbench_local.certify.base import (
    CertifiedBatch,
    Certifier,
    check_eps_grid,
    grid_radius,
    nested,
    register_certifier,
)
from robustbench_local.certify.bound_methods import clean_correct
from robustbench_local.health import Flag, failed, passed

logger = logging.getLogger(__name__)

ROBUST, UNKNOWN, COUNTEREXAMPLE = 1, 0, -1
"""The three outcomes in ``extra["milp_outcome"]``."""

BASIS_CHUNK = 2048
"""Basis vectors pushed through an affine segment at once when building its matrix."""


# --------------------------------------------------------------------------- the network


@dataclass(frozen=True)
class Segment:
    """The affine map between two ReLUs: ``z = matrix @ a_prev + bias`` (float64).

    Attributes:
        matrix: Sparse ``[out, in]``.
        bias: ``[out]``.
        node: Index of the graph node it ends at (a pre-activation, or the logits).
    """

    matrix: sp.csr_matrix
    bias: np.ndarray
    node: int


def chain_segments(graph: BoundGraph) -> list[Segment]:
    """The network as affine segments separated by ReLUs (float64 matrices).

    Raises:
        ValueError: Branches (residual connections) or operations other than affine layers and
            ReLUs (e.g. max pooling), named.
    """
    if not graph.is_chain():
        raise ValueError(
            "milp encodes feed-forward chains of affine layers and ReLUs; this model has "
            "branches (e.g. residual connections): use ibp or crown"
        )
    segments, ops, start = [], [], 0
    for node in graph.nodes[1:]:
        if isinstance(node.op, ReLUOp):
            segments.append(_segment(ops, graph.nodes[start].shape, node.index - 1))
            ops, start = [], node.index
        elif node.op is not None and node.op.linear:
            ops.append(node.op)
        else:
            raise ValueError(f"milp cannot encode {node.where}: only affine layers and ReLUs")
    segments.append(_segment(ops, graph.nodes[start].shape, graph.output))
    return segments


def _segment(ops: Sequence[BoundOp], in_shape: tuple[int, ...], node: int) -> Segment:
    """The matrix of a composition of affine operations, by pushing the basis through it."""

    def apply(z: Tensor) -> Tensor:
        for op in ops:
            z = op.forward(z)
        return z.flatten(1)

    d = numel(in_shape)
    with torch.no_grad():
        bias = apply(torch.zeros(1, *in_shape, dtype=torch.float64))[0]
        columns = []
        for lo in range(0, d, BASIS_CHUNK):
            basis = torch.eye(d, dtype=torch.float64)[lo : lo + BASIS_CHUNK]
            columns.append(sp.csr_matrix((apply(basis.reshape(-1, *in_shape)) - bias).numpy()))
    return Segment(sp.vstack(columns).T.tocsr(), bias.numpy(), node)


# --------------------------------------------------------------------------- one program


@dataclass
class Program:
    """The constraints of one sample at one eps; :meth:`margin` minimises one margin.

    Variables: the input ``x`` (``d0``), then per hidden layer its activations ``a`` and its
    indicators ``d``.
    """

    constraints: LinearConstraint | None
    lower: np.ndarray
    upper: np.ndarray
    integrality: np.ndarray
    last: slice
    logits: Segment
    indicator: np.ndarray

    def admits(self, v: np.ndarray, tol: float = 1e-6) -> bool:
        """Whether the variables ``v`` satisfy the encoding.

        The clean input's variables must, if the bounds are sound; only then does an
        infeasible program prove robustness. Indicators of stable neurons are fixed at 0.
        """
        v = np.where(self.indicator & (self.integrality == 0), 0.0, v)
        inside = bool(np.all(v >= self.lower - tol) and np.all(v <= self.upper + tol))
        if self.constraints is None or not inside:
            return inside
        row = self.constraints.A @ v
        lb, ub = self.constraints.lb, self.constraints.ub
        return bool(np.all(row >= lb - tol) and np.all(row <= ub + tol))

    def margin(self, y: int, j: int, time_limit: float, cutoff: float) -> tuple[Any, float]:
        """HiGHS' result for ``min logit_y - logit_j`` subject to ``logit_y - logit_j <= cutoff``.

        The cut turns a robustness proof into an infeasibility proof, which prunes every
        branch whose relaxation stays above ``cutoff``; returns the result and the objective's
        constant.
        """
        m = self.logits.matrix
        objective = np.zeros(len(self.lower))
        objective[self.last] = (m.getrow(y) - m.getrow(j)).toarray()[0]
        const = float(self.logits.bias[y] - self.logits.bias[j])
        cut = LinearConstraint(objective[None, :], -np.inf, cutoff - const)
        constraints = [cut] if self.constraints is None else [self.constraints, cut]
        res = milp(
            objective,
            integrality=self.integrality,
            bounds=Bounds(self.lower, self.upper),
            constraints=constraints,
            options={"time_limit": max(time_limit, 1e-3), "disp": False},
        )
        return res, const


def witness(segments: Sequence[Segment], x: Tensor) -> np.ndarray:
    """The program's variables at the clean input ``x`` (its activations and their signs)."""
    values = [x.flatten().numpy()]
    prev = values[0]
    for seg in segments[:-1]:
        z = seg.matrix @ prev + seg.bias
        prev = np.maximum(z, 0.0)
        values += [prev, (z > 0).astype(float)]
    return np.concatenate(values)


def build_program(segments: Sequence[Segment], layer: Sequence[Interval], box: Interval) -> Program:
    """Tjeng et al.'s encoding of one sample: ``layer`` its node bounds, ``box`` its input set."""
    lows = [box[0].flatten().numpy()]
    highs = [box[1].flatten().numpy()]
    integrality = [np.zeros(len(lows[0]))]
    indicator = [np.zeros(len(lows[0]), dtype=bool)]
    blocks: list[Rows] = []
    prev, offset = slice(0, len(lows[0])), len(lows[0])
    for seg in segments[:-1]:
        lo, hi = (t.flatten().numpy() for t in layer[seg.node])
        n = len(lo)
        act, ind = slice(offset, offset + n), slice(offset + n, offset + 2 * n)
        offset += 2 * n
        blocks += _relu_rows(seg, lo, hi, prev, act, ind)
        unstable = (lo < 0) & (hi > 0)
        lows += [np.zeros(n), np.zeros(n)]
        highs += [np.maximum(hi, 0.0), unstable.astype(float)]
        integrality += [np.zeros(n), unstable.astype(float)]
        indicator += [np.zeros(n, dtype=bool), np.ones(n, dtype=bool)]
        prev = act
    constraints = None
    if blocks:
        rows = [_widen(cols, offset) for cols, _, _ in blocks]
        lb = np.concatenate([lo for _, lo, _ in blocks])
        ub = np.concatenate([hi for _, _, hi in blocks])
        constraints = LinearConstraint(sp.vstack(rows).tocsr(), lb, ub)
    return Program(
        constraints,
        np.concatenate(lows),
        np.concatenate(highs),
        np.concatenate(integrality),
        prev,
        segments[-1],
        np.concatenate(indicator),
    )


Rows = tuple[list[tuple[slice, sp.spmatrix]], np.ndarray, np.ndarray]
"""Constraint rows as ``([(columns, block), ...], lower, upper)``."""


def _relu_rows(
    seg: Segment, lo: np.ndarray, hi: np.ndarray, prev: slice, act: slice, ind: slice
) -> list[Rows]:
    """The rows of one ReLU layer as ``([(columns, block), ...], lower, upper)``.

    ``a - M p >= c`` for every neuron that can be active (``= c`` when stable active), and for
    unstable ones ``a - u d <= 0`` and ``a - M p - l d <= c - l``.
    """
    live = np.flatnonzero(hi > 0)
    unstable = np.flatnonzero((lo < 0) & (hi > 0))
    n = len(lo)
    eye = sp.identity(n, format="csr")
    c = seg.bias
    upper_first = np.where(lo[live] >= 0, c[live], np.inf)
    first = ([(prev, -seg.matrix[live]), (act, eye[live])], c[live], upper_first)
    u_rows = ([(act, eye[unstable]), (ind, -sp.diags(hi, format="csr")[unstable])],
              np.full(len(unstable), -np.inf), np.zeros(len(unstable)))  # fmt: skip
    l_rows = ([(prev, -seg.matrix[unstable]), (act, eye[unstable]),
               (ind, -sp.diags(lo, format="csr")[unstable])],
              np.full(len(unstable), -np.inf), c[unstable] - lo[unstable])  # fmt: skip
    return [first, u_rows, l_rows]


def _widen(columns: list[tuple[slice, sp.spmatrix]], width: int) -> sp.csr_matrix:
    """Place column blocks at their slices of a ``[rows, width]`` matrix."""
    parts = []
    for cols, block in columns:
        coo = sp.coo_matrix(block)
        parts.append((coo.row, coo.col + cols.start, coo.data, coo.shape[0]))
    rows = parts[0][3]
    r = np.concatenate([p[0] for p in parts])
    cidx = np.concatenate([p[1] for p in parts])
    data = np.concatenate([p[2] for p in parts])
    return sp.csr_matrix((data, (r, cidx)), shape=(rows, width))


# --------------------------------------------------------------------------- the certifier


@dataclass
class _Job:
    """One batch being verified: the model, its float64 copy and encoding, the samples."""

    model: nn.Module
    exact: nn.Module
    segments: list[Segment]
    x: Tensor
    y: Tensor
    ids: Tensor
    seed: int
    state: _BatchState


@register_certifier("milp")
class MILPCertifier(Certifier):
    """Exact linf verification of small ReLU networks (Tjeng et al. 2019) with HiGHS.

    Per eps (increasing), a PGD attack first looks for counterexamples (as Tjeng et al.'s and
    alpha-beta-CROWN's pipelines do: cheap where the model is not robust), then every margin
    CROWN does not prove is solved as a program with the cut ``margin <= tolerance``: an
    infeasible program proves the margin.

    Args:
        norm: ``"linf"`` (the only one: an l2 ball is not linear).
        bounds: The input box.
        time_limit: Seconds per sample and eps (default 30); past it the outcome is unknown.
        big_m: Pre-activation bounds for the encoding: ``"crown"`` (tighter, default) or
            ``"ibp"``.
        presolve: Skip the margins CROWN already proves positive (default True).
        attack_steps: Steps of the PGD attack run first (default 50; 0: none).
        tolerance: A margin counts as proven only above this (default 1e-5, above HiGHS'
            feasibility tolerances).

    ``extra``: ``milp_outcome`` ``int8 [K, n]`` (1 robust, 0 unknown, -1 counterexample),
    ``milp_time`` ``[K, n]`` seconds, ``counterexample`` ``[K, d, n]`` (flattened inputs, NaN
    where none; a clean-misclassified sample is its own counterexample).

    References:
        Tjeng, Xiao & Tedrake, "Evaluating Robustness of Neural Networks with Mixed Integer
        Programming", ICLR 2019, arXiv:1711.07356.
    """

    name = "milp"
    norms: ClassVar[tuple[str, ...]] = ("linf",)

    def __init__(
        self,
        norm: str | None = None,
        bounds: tuple[float, float] = (0.0, 1.0),
        time_limit: float = 30.0,
        big_m: str = "crown",
        presolve: bool = True,
        attack_steps: int = 50,
        tolerance: float = 1e-5,
    ) -> None:
        super().__init__(norm, bounds)
        self.time_limit = check_number("time_limit", time_limit, low_open=True)
        self.big_m = check_choice("big_m", big_m, ("crown", "ibp"))
        self.presolve = check_bool("presolve", presolve)
        self.attack_steps = check_positive_int("attack_steps", attack_steps, minimum=0)
        self.tolerance = check_number("tolerance", tolerance)

    def settings(self) -> dict[str, Any]:
        """Time limit, big-M bounds, presolve, the attack's steps and the tolerance."""
        return {
            "time_limit": self.time_limit,
            "big_m": self.big_m,
            "presolve": self.presolve,
            "attack_steps": self.attack_steps,
            "tolerance": self.tolerance,
        }

    def certify_batch(
        self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor, eps: Sequence[float], seed: int
    ) -> CertifiedBatch:
        """Verify every sample at every eps (increasing; a counterexample ends the sample)."""
        start = time.perf_counter()
        grid = check_eps_grid(eps)
        check_bounded_model(model, "milp")
        y, correct = clean_correct(model, x, y, self.bounds)
        exact = copy.deepcopy(model).cpu().double()  # HiGHS works on host arrays, in float64
        segments = chain_segments(BoundGraph.of(exact, x.cpu().double()))
        state = _BatchState.start(x, correct, len(grid))
        job = _Job(model, exact, segments, x, y, ids, seed, state)
        for k, e in enumerate(grid):
            self._attack(job, e, k)
            self._solve(job, e, k)
        certified = state.finish(correct)
        extra = {
            "milp_outcome": state.outcome.to(x.device),
            "milp_time": state.seconds.to(x.device),
            "counterexample": state.points.to(x.device),
        }
        cost = Cost(time.perf_counter() - start, int(state.forwards), int(state.backwards))
        radius = grid_radius(certified, grid).to(x.device)
        return CertifiedBatch(certified.to(x.device), correct, radius, cost, extra)

    def health(self, extra: Mapping[str, Tensor], certified: Tensor) -> list[Flag]:
        """A warning when some (sample, eps) pairs stayed undecided (counted not certified)."""
        outcome = extra.get("milp_outcome")
        if outcome is None:
            return []
        unknown = int((outcome == UNKNOWN).sum())
        pairs = f"{outcome.numel()} (sample, eps) pairs"
        if unknown == 0:
            return [passed("milp_decided", f"every one of the {pairs} was decided")]
        return [
            failed(
                "milp_decided",
                "warning",
                f"{unknown} of the {pairs} stayed undecided within time_limit="
                f"{self.time_limit:g}s; they count as not certified",
                "raise time_limit (or certify a smaller network) for an exact count",
                unknown=unknown,
            )
        ]

    def _attack(self, job: _Job, eps: float, k: int) -> None:
        """PGD on the open samples; each input that changes the class is a counterexample."""
        idx = job.state.open.nonzero().flatten().to(job.x.device)
        if self.attack_steps == 0 or idx.numel() == 0 or eps == 0:
            return
        pgd = attacks.create(
            "pgd", norm="linf", steps=self.attack_steps, bounds=self.bounds, seed=job.seed
        )
        began = time.perf_counter()
        res = pgd(job.model, job.x[idx], job.y[idx], eps=eps, ids=job.ids[idx])
        job.state.forwards += res.n_forward
        job.state.backwards += res.n_backward
        with torch.no_grad():
            changed = job.model(res.x_adv).argmax(1) != job.y[idx]
        seconds = (time.perf_counter() - began) / idx.numel()
        for pos in changed.nonzero().flatten().tolist():
            job.state.record(k, int(idx[pos]), COUNTEREXAMPLE, res.x_adv[pos], seconds)

    def _solve(self, job: _Job, eps: float, k: int) -> None:
        """Solve the programs of the samples still open at ``eps`` (the ``k``-th radius)."""
        idx = job.state.open.nonzero().flatten()
        if idx.numel() == 0:
            return
        x64 = job.x[idx.to(job.x.device)].cpu().double()
        y = job.y.cpu()[idx]
        bounded = BoundedModel(job.exact)
        with torch.no_grad():
            layer = bounded.layer_bounds(Perturbation(x64, eps, "linf", self.bounds), self.big_m)
            margins = bounded.margins(x64, y, eps, method="crown", bounds=self.bounds)
        job.state.forwards += bounded.units * idx.numel()
        for pos, i in enumerate(idx.tolist()):
            began = time.perf_counter()
            sample = [(lo[pos : pos + 1], hi[pos : pos + 1]) for lo, hi in layer]
            outcome, point = self._verify(job, sample, x64[pos], int(y[pos]), margins[pos])
            job.state.record(k, i, outcome, point, time.perf_counter() - began)

    def _verify(
        self, job: _Job, layer: list[Interval], x64: Tensor, y: int, crown: Tensor
    ) -> tuple[int, Tensor | None]:
        """Outcome of one sample at one eps, and the counterexample if one was found."""
        program = build_program(job.segments, layer, layer[0])
        if not program.admits(witness(job.segments, x64)):
            logger.warning("milp: the encoding excludes the clean input (numerical trouble)")
            return UNKNOWN, None
        deadline = time.perf_counter() + self.time_limit
        targets = [j for j in crown.argsort().tolist() if j != y]
        if self.presolve:
            targets = [j for j in targets if float(crown[j]) <= self.tolerance]
        outcome = ROBUST
        for j in targets:
            left = deadline - time.perf_counter()
            if left <= 0:
                return UNKNOWN, None
            res, const = program.margin(y, j, left, self.tolerance)
            verdict, point = self._read(res, const, program, job, x64.shape, y)
            if verdict == COUNTEREXAMPLE:
                return COUNTEREXAMPLE, point
            if verdict == UNKNOWN:
                outcome = UNKNOWN
        return outcome, None

    def _read(
        self, res: Any, const: float, program: Program, job: _Job, shape: torch.Size, y: int
    ) -> tuple[int, Tensor | None]:
        """Read HiGHS' answer for one margin.

        Robust when no input has a margin below the cut (infeasible, or the dual bound clears
        it); a counterexample when the solver's input changes the class; else unknown.
        """
        if res.status == 2:
            return ROBUST, None
        dual = getattr(res, "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual) and dual + const > self.tolerance:
            return ROBUST, None
        if res.x is None or res.fun is None or res.fun + const >= 0:
            return UNKNOWN, None
        point = _candidate(res.x, program, job.x, shape)
        with torch.no_grad():
            changed = int(job.model(point.unsqueeze(0)).argmax(1)) != y
        return (COUNTEREXAMPLE, point) if changed else (UNKNOWN, None)


def _candidate(solution: np.ndarray, program: Program, ref: Tensor, shape: torch.Size) -> Tensor:
    """The solver's input, clipped into the ball and box, on ``ref``'s device and dtype."""
    d = math.prod(shape)
    point = np.clip(solution[:d], program.lower[:d], program.upper[:d])
    return torch.from_numpy(point).to(device=ref.device, dtype=ref.dtype).reshape(shape)


@dataclass
class _BatchState:
    """Per-sample outcomes, times and counterexamples of one batch while it is verified."""

    outcome: Tensor
    seconds: Tensor
    points: Tensor
    open: Tensor
    forwards: float
    backwards: int = 0

    @classmethod
    def start(cls, x: Tensor, correct: Tensor, k: int) -> _BatchState:
        n, d = x.shape[0], x[0].numel()
        outcome = torch.zeros(k, n, dtype=torch.int8)
        points = torch.full((k, d, n), math.nan, dtype=torch.float32)
        wrong = (~correct).cpu()
        outcome[:, wrong] = COUNTEREXAMPLE
        points[:, :, wrong] = x[wrong].flatten(1).T.float().cpu().unsqueeze(0)
        return cls(outcome, torch.zeros(k, n), points, correct.clone().cpu(), float(n))

    def record(self, k: int, i: int, outcome: int, point: Tensor | None, seconds: float) -> None:
        """Store sample ``i``'s outcome at the ``k``-th eps; a counterexample covers larger eps."""
        self.seconds[k, i] = seconds
        if outcome == COUNTEREXAMPLE and point is not None:
            self.outcome[k:, i] = COUNTEREXAMPLE
            self.points[k:, :, i] = point.flatten().float().cpu()
            self.open[i] = False
            self.forwards += 1
        else:
            self.outcome[k, i] = outcome

    def finish(self, correct: Tensor) -> Tensor:
        """``bool [K, n]``: proven at this or a larger eps, never against a counterexample."""
        cex = self.outcome == COUNTEREXAMPLE
        certified = nested(self.outcome == ROBUST) & correct.cpu().unsqueeze(0)
        clash = certified & cex
        if bool(clash.any()):
            logger.warning(
                "milp: %d (sample, eps) pairs proven at a larger eps have a checked "
                "counterexample; counted not certified (numerical trouble)",
                int(clash.sum()),
            )
        certified &= ~cex
        self.outcome[certified & (self.outcome == UNKNOWN)] = ROBUST
        return certified


__all__ = [
    "COUNTEREXAMPLE",
    "ROBUST",
    "UNKNOWN",
    "MILPCertifier",
    "Program",
    "Segment",
    "build_program",
    "chain_segments",
]
