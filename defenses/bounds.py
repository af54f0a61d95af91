"""Bound propagation in pure PyTorch: interval bounds (IBP) and linear bounds (CROWN).

Given a classifier, inputs ``x``, labels ``y`` and a perturbation set (an linf or l2 ball of
radius ``eps`` around ``x`` intersected with the input box ``[lo, hi]``), these functions bound
the network's outputs over the whole set:

- ``"ibp"`` (Gowal et al. 2018): interval arithmetic layer by layer, as centre and radius, so
  an affine layer costs two passes; two forward passes in all. For l2 balls the first weighted
  layer gets its exact l2-ball bound (Hoelder: ``w.x0 +- eps * ||w||_2``) intersected with the
  box bound, and the layers after it use intervals.
- ``"crown"`` (Zhang et al. 2018): a linear relaxation of every ReLU, bounds propagated
  backwards from the quantity of interest to the input, where a linear function is bounded
  exactly over the set. A ReLU's relaxation needs bounds of its input: every such layer gets
  them from one batched backward pass over all its neurons that the interval bound leaves
  unstable (stable neurons are exact either way), split into chunks only above a memory budget;
  each neuron keeps the tighter of its CROWN and interval bounds, and so does every final
  margin.
- ``"crown-ibp"`` (Zhang et al. 2020): interval bounds for the intermediate layers and one
  CROWN backward pass for the margins, unmixed (certified training mixes it with IBP).

The quantity certified is the margin ``logit_y - logit_j`` for every ``j != y``: the
specification matrix ``C`` (rows ``e_y - e_j``) is folded into the last linear layer, which is
much tighter than subtracting bounds of the logits. :func:`margin_bounds` returns lower bounds
``[N, classes]`` of these margins with 0 in the label's own column; a sample is certified when
all the others are positive.

Supported networks: see :mod:`defenses.bound_graph` (Linear, Conv2d, ReLU, Flatten, BatchNorm
in eval mode, average pooling, normalisation, residual additions; MaxPool2d for IBP only).
Everything is differentiable, so certified training (:mod:`defenses.certified`) uses the same
code. Bounds are computed in the model's dtype; floating-point rounding is not accounted for.

Cost in forward-pass units: IBP's two interval passes count 2. A CROWN backward pass of ``S``
specification rows from a layer ``v`` to the input counts ``S`` times the multiply-adds of the
layers up to ``v`` divided by those of one forward pass (twice when it bounds both sides), so
units compare with forward passes of the same network (see :attr:`BoundedModel.units`).

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018.
    Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with
    General Activation Functions" (CROWN), NeurIPS 2018, arXiv:1811.00866.
    Zhang et al., "Towards Stable and Efficient Training of Verifiably Robust Neural Networks"
    (CROWN-IBP), ICLR 2020, arXiv:1906.06316.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attacks.validation import check_bounds, check_choice, check_number
from defenses.bound_graph import (
    BoundGraph,
    check_bounded_model,
    numel,
    prefix_flops,
    register_bound_layer,
    total_flops,
)
from defenses.bound_ops import Interval, batched_dot, interval_product

NORMS = ("linf", "l2")
METHODS = ("ibp", "crown", "crown-ibp")
MEMORY_BUDGET = 2**24
"""Largest coefficient tensor (elements) of one CROWN backward pass before it is chunked."""


@dataclass(frozen=True)
class Perturbation:
    """The perturbation set: a ball of radius ``eps`` around ``x`` intersected with the box.

    Attributes:
        x: ``[B, *shape]`` the centres.
        eps: The radius (input units).
        norm: ``"linf"`` or ``"l2"``.
        bounds: The input box ``(lo, hi)``.
    """

    x: Tensor
    eps: float
    norm: str = "linf"
    bounds: tuple[float, float] = (0.0, 1.0)

    def box(self) -> Interval:
        """The smallest box holding the set: ``[max(x - eps, lo), min(x + eps, hi)]``."""
        lo, hi = self.bounds
        return (self.x - self.eps).clamp(min=lo), (self.x + self.eps).clamp(max=hi)

    def concretize(self, A: Tensor, upper: bool) -> Tensor:
        """Bound of ``A . x'`` over the set (``[B, S, *shape] -> [B, S]``).

        linf: exact over the box. l2: the tighter of the box bound and the ball bound
        ``A . x -+ eps * ||A||_2`` (both enclose the intersection).
        """
        box = interval_product(A, self.box(), upper)
        if self.norm != "l2":
            return box
        centre = batched_dot(A, self.x)
        spread = self.eps * torch.linalg.vector_norm(A.flatten(2), dim=-1)
        if upper:
            return torch.minimum(box, centre + spread)
        return torch.maximum(box, centre - spread)


def make_perturbation(
    x: Tensor, eps: float, norm: str = "linf", bounds: tuple[float, float] = (0.0, 1.0)
) -> Perturbation:
    """A checked :class:`Perturbation`.

    Raises:
        ValueError: A norm other than linf/l2, a negative eps, bad bounds.
    """
    check_choice("norm", norm, NORMS, " (bound propagation certifies linf and l2 balls)")
    eps = check_number("eps", eps)
    return Perturbation(x, eps, norm, check_bounds(bounds))


def spec_matrix(y: Tensor, classes: int, dtype: torch.dtype) -> Tensor:
    """``C [B, classes, classes]``: row ``j`` is ``e_y - e_j`` (row ``y`` is zero)."""
    eye = torch.eye(classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


class BoundedModel:
    """A classifier ready for bound propagation: traced once, weights read live.

    Args:
        model: The classifier (``nn.Module`` returning logits).
        allow_train: Accept train mode when it changes nothing (for certified training).
        memory_budget: Largest coefficient tensor (elements) of a CROWN backward pass.

    Attributes:
        units: Forward-pass units per sample spent by the last call (see the module doc).

    Raises:
        ValueError: A random or non-differentiable model, or one in train mode with
            BatchNorm/Dropout (see :func:`~defenses.bound_graph.check_bounded_model`).
    """

    def __init__(
        self, model: nn.Module, *, allow_train: bool = False, memory_budget: int = MEMORY_BUDGET
    ) -> None:
        check_bounded_model(model, "bound propagation", allow_train=allow_train)
        self.model = model
        self.allow_train = allow_train
        self.memory_budget = int(memory_budget)
        self.units = 0.0

    def graph(self, x: Tensor) -> BoundGraph:
        """The traced graph for inputs shaped like ``x``."""
        check_bounded_model(self.model, "bound propagation", allow_train=self.allow_train)
        return BoundGraph.of(self.model, x)

    def check_method(self, graph: BoundGraph, method: str) -> None:
        """Raise a ``ValueError`` naming the layers ``method`` cannot handle."""
        bad = graph.unsupported(linear_only=method != "ibp")
        if bad:
            raise ValueError(
                f"{method} cannot bound {', '.join(bad)} (no linear relaxation); use "
                "method='ibp' for this model"
            )

    # ---- layer bounds

    def interval_bounds(self, domain: Perturbation) -> list[Interval]:
        """IBP bounds of every node of the graph (the input's box first)."""
        graph = self.graph(domain.x)
        self.units = 2.0
        return self._forward_bounds(graph, domain, crown=False)

    def layer_bounds(self, domain: Perturbation, method: str = "crown") -> list[Interval]:
        """Bounds of every node; ``"crown"`` tightens every ReLU input with CROWN."""
        check_choice("method", method, METHODS)
        graph = self.graph(domain.x)
        self.check_method(graph, method)
        self.units = 2.0
        return self._forward_bounds(graph, domain, crown=method == "crown")

    def _forward_bounds(
        self, graph: BoundGraph, domain: Perturbation, crown: bool
    ) -> list[Interval]:
        """Interval propagation in topological order, tightened where asked."""
        bounds: list[Interval] = []
        l2 = _L2FirstLayer(domain) if domain.norm == "l2" else None
        pre = set(graph.pre_activations)
        for node in graph.nodes:
            if node.op is None:
                b = domain.box()
            else:
                b = node.op.interval(*(bounds[i] for i in node.inputs))
            if l2 is not None:
                b = l2.tighten(node, b)
            if crown and node.index in pre and _needs_crown(graph, node.index, domain):
                b = self._crown_tighten(graph, bounds, domain, node.index, b)
            bounds.append(b)
        return bounds

    def _crown_tighten(
        self,
        graph: BoundGraph,
        bounds: list[Interval],
        domain: Perturbation,
        index: int,
        ibp: Interval,
    ) -> Interval:
        """Intersect ``ibp`` with CROWN bounds of the neurons it leaves unstable."""
        lo, hi = ibp
        flat_lo, flat_hi = lo.flatten(1), hi.flatten(1)
        unstable = ((flat_lo < 0) & (flat_hi > 0)).any(0).nonzero().flatten()
        if unstable.numel() == 0:
            return ibp
        new_lo, new_hi = flat_lo.clone(), flat_hi.clone()
        for rows in self._chunks(graph, index, unstable, lo.shape[0]):
            A = _one_hot_rows(rows, lo.shape[0], graph.nodes[index].shape, lo)
            low = self._backward(graph, bounds, domain, index, A, upper=False)
            up = self._backward(graph, bounds, domain, index, A, upper=True)
            new_lo[:, rows] = torch.maximum(flat_lo[:, rows], low)
            new_hi[:, rows] = torch.minimum(flat_hi[:, rows], up)
        return new_lo.reshape(lo.shape), new_hi.reshape(hi.shape)

    def _chunks(self, graph: BoundGraph, index: int, rows: Tensor, batch: int) -> list[Tensor]:
        """Split the specification rows so no coefficient tensor exceeds the budget."""
        widest = max(numel(n.shape) for n in graph.nodes[: index + 1])
        size = max(1, self.memory_budget // max(1, batch * widest))
        return list(rows.split(size))

    def _backward(
        self,
        graph: BoundGraph,
        bounds: list[Interval],
        domain: Perturbation,
        start: int,
        A: Tensor,
        upper: bool,
    ) -> Tensor:
        """Bound of ``A . node_start`` (``[B, S]``) by one CROWN backward pass to the input."""
        self.units += A.shape[1] * prefix_flops(graph)[start] / total_flops(graph)
        pending: dict[int, Tensor] = {start: A}
        const = A.new_zeros(A.shape[:2])
        for idx in range(start, -1, -1):
            coeff = pending.pop(idx, None)
            if coeff is None:
                continue
            node = graph.nodes[idx]
            if node.op is None:
                return const + domain.concretize(coeff, upper)
            ins = [bounds[i] for i in node.inputs]
            back, c = _step(node.op, coeff, ins, upper)
            const = const + c
            for i, a in zip(node.inputs, back, strict=True):
                pending[i] = pending[i] + a if i in pending else a
        return const  # the output does not depend on the input

    # ---- margins

    def margins(
        self,
        x: Tensor,
        y: Tensor,
        eps: float,
        *,
        method: str = "ibp",
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> Tensor:
        """Lower bounds ``[B, classes]`` of ``logit_y - logit_j`` over the set (0 at ``j = y``).

        Args:
            x: ``[B, *shape]`` inputs.
            y: ``[B]`` labels.
            eps: The radius.
            method: ``"ibp"``, ``"crown"`` or ``"crown-ibp"`` (see the module doc).
            norm: ``"linf"`` or ``"l2"``.
            bounds: The input box.

        Raises:
            ValueError: An unknown method or norm, a layer the method cannot handle.
        """
        check_choice("method", method, METHODS)
        ibp, crown = self._margin_pair(x, y, eps, method, norm, bounds)
        if crown is None:
            return ibp
        return crown if method == "crown-ibp" else torch.maximum(crown, ibp)

    def mixed_margins(
        self,
        x: Tensor,
        y: Tensor,
        eps: float,
        beta: float,
        *,
        norm: str = "linf",
        bounds: tuple[float, float] = (0.0, 1.0),
    ) -> Tensor:
        """``beta * m_CROWN-IBP + (1 - beta) * m_IBP`` from one interval pass.

        The margin bound of CROWN-IBP training (Zhang et al. 2020); the backward pass is
        skipped at ``beta = 0``.
        """
        method = "crown-ibp" if beta > 0 else "ibp"
        ibp, crown = self._margin_pair(x, y, eps, method, norm, bounds)
        return ibp if crown is None else beta * crown + (1.0 - beta) * ibp

    def _margin_pair(
        self,
        x: Tensor,
        y: Tensor,
        eps: float,
        method: str,
        norm: str,
        bounds: tuple[float, float],
    ) -> tuple[Tensor, Tensor | None]:
        """IBP margins and, unless ``method`` is ``"ibp"``, CROWN's (from the same pass)."""
        domain = make_perturbation(x, eps, norm, bounds)
        graph = self.graph(x)
        self.check_method(graph, method)
        self.units = 2.0
        layer = self._forward_bounds(graph, domain, crown=method == "crown")
        classes = graph.nodes[graph.output].shape[0]
        C = spec_matrix(y, classes, x.dtype)
        ibp = self._ibp_margins(graph, layer, C)
        if method == "ibp":
            return ibp, None
        return ibp, self._backward(graph, layer, domain, graph.output, C, upper=False)

    def _ibp_margins(self, graph: BoundGraph, layer: list[Interval], C: Tensor) -> Tensor:
        """IBP margins with ``C`` folded into the last layer when it is linear."""
        out = graph.nodes[graph.output]
        if out.op is not None and out.op.linear and len(out.inputs) == 1:
            self.units += C.shape[1] * out.op.flops() / total_flops(graph)
            back, const = out.op.backward(C, [layer[out.inputs[0]]], False)
            return const + interval_product(back[0], layer[out.inputs[0]], upper=False)
        return interval_product(C, layer[graph.output], upper=False)


def _step(op, coeff: Tensor, ins: list[Interval], upper: bool) -> tuple[list[Tensor], Tensor]:
    """One backward step.

    Coefficients shared by the whole batch (an expanded identity specification before any
    ReLU) go through an affine layer once, not once per sample.
    """
    batch = coeff.shape[0]
    if batch > 1 and op.linear and coeff.stride(0) == 0:
        back, c = op.backward(coeff[:1], [(lo[:1], hi[:1]) for lo, hi in ins], upper)
        expand = [a.expand(batch, *a.shape[1:]) for a in back]
        return expand, c.expand(batch, *c.shape[1:])
    return op.backward(coeff, ins, upper)


def _needs_crown(graph: BoundGraph, index: int, domain: Perturbation) -> bool:
    """CROWN adds nothing on a linf layer affine in the input (its interval bound is exact)."""
    return not (graph.affine[index] and domain.norm == "linf")


def _one_hot_rows(rows: Tensor, batch: int, shape: tuple[int, ...], ref: Tensor) -> Tensor:
    """``[B, len(rows), *shape]``: row ``k`` selects neuron ``rows[k]``."""
    A = ref.new_zeros(len(rows), numel(shape))
    A[torch.arange(len(rows), device=ref.device), rows] = 1
    return A.reshape(1, len(rows), *shape).expand(batch, *([-1] * (1 + len(shape))))


class _L2FirstLayer:
    """The exact l2-ball bound of the first weighted layer, intersected with its box bound.

    Walks the affine prefix from the input: elementwise scalings and reshapes carry the exact
    point value and the squared row norms; at the first Linear/Conv2d/pooling layer the bound
    ``f(x) -+ eps * ||row||_2`` is intersected with the interval, and the walk stops.
    """

    def __init__(self, domain: Perturbation) -> None:
        self.eps = domain.eps
        self.state: dict[int, tuple[Tensor, Tensor]] = {
            0: (domain.x, torch.ones_like(domain.x[:1]))
        }

    def tighten(self, node, b: Interval) -> Interval:
        if node.op is None or len(node.inputs) != 1 or node.inputs[0] not in self.state:
            return b
        point, s2 = self.state[node.inputs[0]]
        rows = node.op.squared(s2)
        if rows is None:
            return b
        value = node.op.forward(point)
        if not node.op.weighted:
            self.state[node.index] = (value, rows)
            return b
        spread = self.eps * rows.clamp(min=0).sqrt()
        return torch.maximum(b[0], value - spread), torch.minimum(b[1], value + spread)


def margin_bounds(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    method: str = "ibp",
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Lower bounds ``[N, classes]`` of ``logit_y - logit_j`` over the ball (0 at ``j = y``).

    A sample is certified when every other column is positive. See :class:`BoundedModel`.

    Example:
        >>> m = margin_bounds(model.eval(), x, y, 0.1, method="crown")
        >>> certified = (m > 0).sum(1) == m.shape[1] - 1
    """
    return BoundedModel(model).margins(x, y, eps, method=method, norm=norm, bounds=bounds)


def interval_bounds(
    model: nn.Module,
    x: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Interval:
    """IBP lower and upper bounds ``[N, classes]`` of the logits over the ball."""
    bounded = BoundedModel(model)
    layer = bounded.interval_bounds(make_perturbation(x, eps, norm, bounds))
    return layer[bounded.graph(x).output]


def certified_by_margins(margins: Tensor, y: Tensor) -> Tensor:
    """``bool [N]``: every margin but the label's own has a positive lower bound."""
    own = torch.zeros_like(margins, dtype=torch.bool)
    own[torch.arange(len(y), device=y.device), y] = True
    return (margins > 0).logical_or(own).all(dim=1)


__all__ = [
    "METHODS",
    "NORMS",
    "BoundedModel",
    "Perturbation",
    "certified_by_margins",
    "interval_bounds",
    "make_perturbation",
    "margin_bounds",
    "register_bound_layer",
    "spec_matrix",
]
