"""Per-operation rules of bound propagation: exact value, interval (IBP) and linear (CROWN) bounds.

Every operation of a traced network (:mod:`defenses.bound_graph`) becomes a :class:`BoundOp`
that knows three things about itself, per sample:

- ``forward(*xs)``: its exact value (used for the l2 first-layer bound and the MILP).
- ``interval(*bounds)``: interval bounds of its output from interval bounds of its inputs
  (Gowal et al. 2018), computed as centre and radius so an affine layer costs two passes.
- ``backward(A, bounds, upper)``: given the coefficients ``A`` ``[B, S, *out]`` of ``S``
  linear functions of its output, the coefficients of the same functions of its inputs and the
  constant collected on the way: the CROWN backward step (Zhang et al. 2018). Affine operations
  transpose exactly; ReLU substitutes its linear relaxation (lower or upper, by the sign of each
  coefficient).

Shapes (``in_shapes``, ``out_shape``) are per sample (without the batch dimension) and fixed
when the graph is built. Weights are read from the modules at call time, so a network traced
once follows training updates.

References:
    Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
    Robust Models", arXiv:1810.12715, 2018.
    Zhang, Weng, Chen, Hsieh & Daniel, "Efficient Neural Network Robustness Certification with
    General Activation Functions" (CROWN), NeurIPS 2018, arXiv:1811.00866.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Interval = tuple[Tensor, Tensor]
Getter = Callable[[], Tensor]


def center_radius(bounds: Interval) -> tuple[Tensor, Tensor]:
    """``((lo + hi) / 2, (hi - lo) / 2)`` of an interval."""
    lo, hi = bounds
    return (lo + hi) / 2, (hi - lo) / 2


def flat_sum(t: Tensor) -> Tensor:
    """Sum over every dimension after the first two: ``[B, S, ...] -> [B, S]``."""
    return t.flatten(2).sum(-1)


def batched_dot(A: Tensor, v: Tensor) -> Tensor:
    """``[B, S, *shape] . [B, *shape] -> [B, S]`` (a batched matrix-vector product)."""
    return (A.flatten(2) @ v.flatten(1).unsqueeze(-1)).squeeze(-1)


def interval_product(A: Tensor, bounds: Interval, upper: bool) -> Tensor:
    """Bound of ``A . v`` over ``v`` in the box ``bounds``: ``[B, S, *shape] -> [B, S]``."""
    mid, rad = center_radius(bounds)
    centre = batched_dot(A, mid)
    spread = batched_dot(A.abs(), rad)
    return centre + spread if upper else centre - spread


class BoundOp:
    """One operation of a traced network and its bound-propagation rules.

    Attributes:
        where: Where it comes from, for messages (e.g. ``"fc1 (Linear)"``).
        in_shapes: Per-sample shapes of its tensor inputs.
        out_shape: Per-sample shape of its output.
        linear: Affine in its inputs (no relaxation needed).
        crown: Has a linear backward rule (CROWN, MILP); False: interval bounds only.
    """

    linear = True
    crown = True

    def __init__(
        self, where: str, in_shapes: Sequence[tuple[int, ...]], out_shape: tuple[int, ...]
    ):
        self.where = where
        self.in_shapes = [tuple(s) for s in in_shapes]
        self.out_shape = tuple(out_shape)

    def forward(self, *xs: Tensor) -> Tensor:
        """The exact output for inputs ``xs`` (each ``[B, *in_shape]``)."""
        raise NotImplementedError

    def interval(self, *bounds: Interval) -> Interval:
        """Interval bounds of the output from interval bounds of the inputs."""
        raise NotImplementedError

    def backward(
        self, A: Tensor, bounds: Sequence[Interval], upper: bool
    ) -> tuple[list[Tensor], Tensor]:
        """CROWN step: coefficients on the inputs and the constant ``[B, S]`` collected.

        ``A`` is ``[B, S, *out_shape]``; the returned coefficients are ``[B, S, *in_shape]``.
        ``upper`` selects the upper (else lower) relaxation of non-linear operations.
        """
        raise ValueError(f"{self.where} has no linear relaxation: crown and milp cannot use it")

    def squared(self, s2: Tensor) -> Tensor | None:
        """Squared l2 norms of the output rows given those ``s2`` of the input (None: unknown).

        Only for operations that are affine with a per-output row of weights; used for the
        exact l2-ball bound of the first weighted layer.
        """
        return None

    @property
    def weighted(self) -> bool:
        """Mixes inputs (Linear, Conv2d, pooling): ends the l2 first-layer shortcut."""
        return False

    def flops(self) -> int:
        """Multiply-adds per sample (elementwise operations count their output size)."""
        return math.prod(self.out_shape)


# --------------------------------------------------------------------------- affine, weighted


class LinearOp(BoundOp):
    """``x @ W.T + b`` on ``[B, in]`` inputs."""

    def __init__(self, where: str, in_shapes, out_shape, weight: Getter, bias: Getter | None):
        super().__init__(where, in_shapes, out_shape)
        if len(self.in_shapes[0]) != 1:
            raise ValueError(
                f"{where} is applied to inputs of per-sample shape {self.in_shapes[0]}; bound "
                "methods support Linear layers on flat [N, features] inputs (add a Flatten)"
            )
        self.weight, self.bias = weight, bias

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return F.linear(x, self.weight(), None if self.bias is None else self.bias())

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        mid, rad = center_radius(b)
        centre = self.forward(mid)
        spread = F.linear(rad, self.weight().abs())
        return centre - spread, centre + spread

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        const = A @ self.bias() if self.bias is not None else A.new_zeros(A.shape[:2])
        return [A @ self.weight()], const

    def squared(self, s2: Tensor) -> Tensor:
        """Squared row norms of the output."""
        w = self.weight()
        return F.linear(s2, w * w)

    @property
    def weighted(self) -> bool:
        """Whether it mixes inputs."""
        return True

    def flops(self) -> int:
        """Multiply-adds per sample."""
        return self.in_shapes[0][0] * self.out_shape[0]


def _transpose_padding(
    in_hw: Sequence[int], out_hw: Sequence[int], kernel, stride, padding, dilation
) -> tuple[int, int]:
    """``output_padding`` making ``conv_transpose2d`` return the convolution's input size."""
    return tuple(
        i - ((o - 1) * s - 2 * p + d * (k - 1) + 1)
        for i, o, k, s, p, d in zip(in_hw, out_hw, kernel, stride, padding, dilation, strict=True)
    )  # type: ignore[return-value]


class Conv2dOp(BoundOp):
    """A 2-d convolution (zero padding); its transpose is ``conv_transpose2d``."""

    def __init__(self, where: str, in_shapes, out_shape, conv: nn.Conv2d):
        super().__init__(where, in_shapes, out_shape)
        if conv.padding_mode != "zeros":
            raise ValueError(f"{where}: padding_mode={conv.padding_mode!r} is not supported")
        self.conv = conv
        self.padding = _explicit_padding(conv, where)
        self.out_padding = _transpose_padding(
            self.in_shapes[0][1:], self.out_shape[1:], conv.kernel_size, conv.stride,
            self.padding, conv.dilation,
        )  # fmt: skip

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        c = self.conv
        return F.conv2d(x, weight, bias, c.stride, self.padding, c.dilation, c.groups)

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return self._conv(x, self.conv.weight, self.conv.bias)

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        mid, rad = center_radius(b)
        centre = self.forward(mid)
        spread = self._conv(rad, self.conv.weight.abs(), None)
        return centre - spread, centre + spread

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        c = self.conv
        B, S = A.shape[:2]
        flat = A.reshape(B * S, *self.out_shape)
        back = F.conv_transpose2d(
            flat, c.weight, None, c.stride, self.padding, self.out_padding, c.groups, c.dilation
        )
        const = A.new_zeros(B, S) if c.bias is None else A.sum((-2, -1)) @ c.bias
        return [back.reshape(B, S, *self.in_shapes[0])], const

    def squared(self, s2: Tensor) -> Tensor:
        """Squared row norms of the output."""
        w = self.conv.weight
        return self._conv(s2, w * w, None)

    @property
    def weighted(self) -> bool:
        """Whether it mixes inputs."""
        return True

    def flops(self) -> int:
        """Multiply-adds per sample."""
        c = self.conv
        return math.prod(self.out_shape) * (c.in_channels // c.groups) * math.prod(c.kernel_size)


def _explicit_padding(conv: nn.Conv2d, where: str) -> tuple[int, int]:
    """The convolution's padding as two integers (``"same"`` resolved, ``"valid"`` = 0)."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise ValueError(f"{where}: padding='same' with an even kernel is not supported")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


class AvgPoolOp(BoundOp):
    """Average pooling (padding counted in the average): a depthwise convolution of ``1/k^2``."""

    def __init__(self, where: str, in_shapes, out_shape, kernel, stride, padding):
        super().__init__(where, in_shapes, out_shape)
        self.kernel, self.stride, self.padding = _pair(kernel), _pair(stride), _pair(padding)
        self.out_padding = _transpose_padding(
            self.in_shapes[0][1:], self.out_shape[1:], self.kernel, self.stride, self.padding,
            (1, 1),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding)

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        return self.forward(b[0]), self.forward(b[1])  # non-negative weights: monotone

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        B, S = A.shape[:2]
        channels = self.out_shape[0]
        weight = A.new_full((channels, 1, *self.kernel), 1.0 / math.prod(self.kernel))
        flat = A.reshape(B * S, *self.out_shape)
        back = F.conv_transpose2d(
            flat, weight, None, self.stride, self.padding, self.out_padding, channels
        )
        return [back.reshape(B, S, *self.in_shapes[0])], A.new_zeros(B, S)

    def squared(self, s2: Tensor) -> Tensor:
        """Squared row norms of the output."""
        return self.forward(s2) / math.prod(self.kernel)

    @property
    def weighted(self) -> bool:
        """Whether it mixes inputs."""
        return True

    def flops(self) -> int:
        """Multiply-adds per sample."""
        return math.prod(self.out_shape) * math.prod(self.kernel)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if len(v) == 1:
        return (int(v[0]), int(v[0]))
    return (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------- affine, elementwise


class ElementwiseAffineOp(BoundOp):
    """``x * scale + shift`` with per-sample-shaped constants (BatchNorm in eval, normalisation)."""

    def __init__(self, where: str, in_shapes, out_shape, scale: Getter, shift: Getter):
        super().__init__(where, in_shapes, out_shape)
        self.scale, self.shift = scale, shift

    def _consts(self, ref: Tensor) -> tuple[Tensor, Tensor]:
        shape = self.out_shape
        scale = self.scale().to(ref.dtype).expand(shape)
        shift = self.shift().to(ref.dtype).expand(shape)
        return scale, shift

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        scale, shift = self._consts(x)
        return x * scale + shift

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        mid, rad = center_radius(b)
        scale, shift = self._consts(mid)
        centre = mid * scale + shift
        spread = rad * scale.abs()
        return centre - spread, centre + spread

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        scale, shift = self._consts(A)
        return [A * scale], flat_sum(A * shift)

    def squared(self, s2: Tensor) -> Tensor:
        """Squared row norms of the output."""
        scale, _ = self._consts(s2)
        return s2 * scale * scale


class ReshapeOp(BoundOp):
    """Flatten / view / reshape keeping the batch dimension."""

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return x.reshape(x.shape[0], *self.out_shape)

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        return self.forward(b[0]), self.forward(b[1])

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        return [A.reshape(*A.shape[:2], *self.in_shapes[0])], A.new_zeros(A.shape[:2])

    def squared(self, s2: Tensor) -> Tensor:
        """Squared row norms of the output."""
        return self.forward(s2)

    def flops(self) -> int:
        """Multiply-adds per sample."""
        return 0


class IdentityOp(ReshapeOp):
    """Dropout in eval mode, ``nn.Identity``, ``contiguous()``: the input unchanged."""


class AddOp(BoundOp):
    """The sum (``sign=1``) or difference (``sign=-1``) of two tensors: residual connections."""

    def __init__(self, where: str, in_shapes, out_shape, sign: float = 1.0):
        super().__init__(where, in_shapes, out_shape)
        if any(tuple(s) != self.out_shape for s in self.in_shapes):
            raise ValueError(f"{where}: broadcasting additions are not supported")
        self.sign = float(sign)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """The exact output."""
        return a + self.sign * b

    def interval(self, a: Interval, b: Interval) -> Interval:
        """Interval bounds of the output."""
        if self.sign > 0:
            return a[0] + b[0], a[1] + b[1]
        return a[0] - b[1], a[1] - b[0]

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        return [A, A * self.sign], A.new_zeros(A.shape[:2])


# --------------------------------------------------------------------------- non-linear


def relu_relaxation(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """CROWN's linear relaxation of ReLU on ``[lo, hi]``: lower slope, upper slope, upper intercept.

    Stable neurons are exact (slope 1 when active, 0 when inactive). An unstable neuron
    (``lo < 0 < hi``) has the upper line through ``(lo, 0)`` and ``(hi, hi)`` and the adaptive
    lower line ``alpha * x`` with ``alpha = 1`` if ``hi >= -lo`` else 0, the choice of
    Zhang et al. (2018) that minimises the relaxation's area.
    """
    active = (lo >= 0).to(lo.dtype)
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(unstable, hi / denom, active)
    up_const = torch.where(unstable, -lo * up_slope, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi >= -lo).to(lo.dtype), active)
    return low_slope, up_slope, up_const


class ReLUOp(BoundOp):
    """``max(x, 0)``: exact intervals; CROWN's relaxation backwards."""

    linear = False

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return F.relu(x)

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        return F.relu(b[0]), F.relu(b[1])

    def backward(self, A, bounds, upper):
        """CROWN step back through this operation."""
        low_slope, up_slope, up_const = (t.unsqueeze(1) for t in relu_relaxation(*bounds[0]))
        pos, neg = A.clamp(min=0), A.clamp(max=0)
        if upper:
            return [pos * up_slope + neg * low_slope], flat_sum(pos * up_const)
        return [pos * low_slope + neg * up_slope], flat_sum(neg * up_const)


class MaxPoolOp(BoundOp):
    """Max pooling: monotone, so exact intervals; no linear relaxation here (IBP only)."""

    linear = False
    crown = False

    def __init__(self, where: str, in_shapes, out_shape, pool: Callable[[Tensor], Tensor]):
        super().__init__(where, in_shapes, out_shape)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        """The exact output."""
        return self.pool(x)

    def interval(self, b: Interval) -> Interval:
        """Interval bounds of the output."""
        return self.pool(b[0]), self.pool(b[1])


__all__ = [
    "AddOp",
    "AvgPoolOp",
    "BoundOp",
    "Conv2dOp",
    "ElementwiseAffineOp",
    "IdentityOp",
    "Interval",
    "LinearOp",
    "MaxPoolOp",
    "ReLUOp",
    "ReshapeOp",
    "batched_dot",
    "center_radius",
    "flat_sum",
    "interval_product",
    "relu_relaxation",
]
