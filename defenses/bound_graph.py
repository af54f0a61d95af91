"""Trace a classifier into the graph of :class:`~defenses.bound_ops.BoundOp` bounds walk.

The model is traced with ``torch.fx``: standard ``torch.nn`` layers (and layer types registered
with :func:`register_bound_layer`) stay whole; everything else is traced through, so a custom
module written with supported operations (the project's ``Normalize`` is ``(x - mean) / std``
on buffers; a pre-activation residual block is convolutions, ReLUs and an addition) needs no
handler. Supported:

- layers: ``Linear``, ``Conv2d``, ``ReLU``, ``Flatten``, ``BatchNorm1d/2d`` (eval mode),
  ``AvgPool2d``, ``AdaptiveAvgPool2d`` (output dividing the input), ``Dropout`` (eval mode),
  ``Identity``, and ``MaxPool2d`` (interval bounds only), nested in any container;
- functions and methods: ``relu``, ``flatten``/``view``/``reshape``, ``avg_pool2d``,
  ``adaptive_avg_pool2d``, ``max_pool2d``, ``dropout`` (not training), additions and
  subtractions of two tensors (residual connections), and ``+ - * /`` with constants.

Anything else is a ``ValueError`` naming the layer and where it sits in the model.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from defenses.bound_ops import (
    AddOp,
    AvgPoolOp,
    BoundOp,
    Conv2dOp,
    ElementwiseAffineOp,
    IdentityOp,
    LinearOp,
    MaxPoolOp,
    ReLUOp,
    ReshapeOp,
)

LayerFactory = Callable[[nn.Module, str, list[tuple[int, ...]], tuple[int, ...]], BoundOp]
_CUSTOM_LAYERS: dict[type, LayerFactory] = {}


def register_bound_layer(layer_type: type) -> Callable[[LayerFactory], LayerFactory]:
    """Register how bound propagation handles a module type (kept whole when tracing).

    The factory gets ``(module, where, in_shapes, out_shape)`` (per-sample shapes) and returns a
    :class:`~defenses.bound_ops.BoundOp`.

    Example:
        >>> @register_bound_layer(MyScale)
        ... def _scale(m, where, in_shapes, out_shape):
        ...     return ElementwiseAffineOp(where, in_shapes, out_shape,
        ...                                lambda: m.factor, lambda: torch.zeros(()))
    """

    def decorator(factory: LayerFactory) -> LayerFactory:
        _CUSTOM_LAYERS[layer_type] = factory
        return factory

    return decorator


@dataclass(frozen=True)
class BoundNode:
    """One tensor of the traced network.

    Attributes:
        index: Position in topological order (0 is the input).
        op: The operation producing it (None for the input).
        inputs: Indices of the nodes it reads.
        shape: Per-sample shape.
    """

    index: int
    op: BoundOp | None
    inputs: tuple[int, ...]
    shape: tuple[int, ...]

    @property
    def where(self) -> str:
        """The node's origin, for messages."""
        return "the input" if self.op is None else self.op.where


# --------------------------------------------------------------------------- model checks


def check_bounded_model(model: nn.Module, what: str, *, allow_train: bool = False) -> None:
    """Refuse models whose output is not a fixed function of the input.

    Args:
        model: The classifier.
        what: The method, for messages (``"ibp"``, ``"crown"``, ``"ibp training"``).
        allow_train: Allow train mode when it changes nothing (no BatchNorm; dropout rate 0),
            as certified training needs.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: A model declaring ``random=True`` or ``differentiable=False``, or in train
            mode with BatchNorm or Dropout layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} needs an nn.Module, got {type(model).__name__}")
    if getattr(model, "random", False):
        raise ValueError(
            f"{what} cannot bound a random model (it declares random=True): its output is not "
            "a function of the input. Certify the smoothed classifier with method='smoothing', "
            "or bound the deterministic classifier inside it"
        )
    if not getattr(model, "differentiable", True):
        raise ValueError(
            f"{what} cannot bound a non-differentiable model (it declares "
            "differentiable=False, e.g. a quantising preprocessor); bound the classifier "
            "without it"
        )
    if model.training:
        _check_train_mode(model, what, allow_train)


def _check_train_mode(model: nn.Module, what: str, allow_train: bool) -> None:
    for name, m in model.named_modules():
        risky = isinstance(m, nn.modules.batchnorm._BatchNorm) or (
            isinstance(m, nn.modules.dropout._DropoutNd) and (not allow_train or m.p > 0)
        )
        if risky:
            fix = "call model.eval() first" if not allow_train else "remove it or set p=0"
            raise ValueError(
                f"{what}: the model is in training mode and {name or 'it'} "
                f"({type(m).__name__}) then depends on the batch or on chance; {fix}"
            )


# --------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """Keeps torch.nn layers and registered layer types whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _CUSTOM_LAYERS:
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule:
    """The fx graph of ``model``.

    Raises:
        ValueError: The forward pass cannot be traced (data-dependent control flow...).
    """
    try:
        graph = _Tracer().trace(model)
    except (fx.proxy.TraceError, TypeError, RuntimeError, AttributeError) as err:
        raise ValueError(
            f"bound propagation cannot trace {type(model).__name__}.forward ({err}); it needs "
            "a static graph of supported layers (no data-dependent control flow)"
        ) from err
    return fx.GraphModule(model, graph)


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once on a probe and records every node's value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


# --------------------------------------------------------------------------- the graph


class BoundGraph:
    """A traced classifier: its nodes in topological order and the logits node.

    Build it with :meth:`of` (cached per model, input shape and dtype).

    Attributes:
        nodes: Every tensor node, the input first.
        output: Index of the logits node.
    """

    def __init__(self, nodes: list[BoundNode], output: int) -> None:
        self.nodes = nodes
        self.output = output
        consumers: dict[int, list[int]] = {}
        for node in nodes:
            for i in node.inputs:
                consumers.setdefault(i, []).append(node.index)
        self.consumers = consumers
        self.affine = self._affine_prefix()
        self.pre_activations = sorted(
            {node.inputs[0] for node in nodes if isinstance(node.op, ReLUOp)}
        )

    _cache: ClassVar[weakref.WeakKeyDictionary[nn.Module, dict[Any, BoundGraph]]] = (
        weakref.WeakKeyDictionary()
    )

    @classmethod
    def of(cls, model: nn.Module, example: Tensor) -> BoundGraph:
        """The graph of ``model`` for inputs shaped like ``example`` ``[B, *shape]``.

        Raises:
            ValueError: An unsupported layer or operation (named), several inputs or outputs,
                an output that is not ``[N, classes]``.
        """
        modules = tuple(id(m) for m in model.modules())
        key = (tuple(example.shape[1:]), example.dtype, model.training, modules)
        per_model = cls._cache.setdefault(model, {})
        if key not in per_model:
            per_model[key] = _build(model, example)
        return per_model[key]

    def _affine_prefix(self) -> list[bool]:
        """Per node: affine in the input (no non-linear operation upstream)."""
        out: list[bool] = []
        for node in self.nodes:
            ok = node.op is None or node.op.linear
            out.append(ok and all(out[i] for i in node.inputs))
        return out

    def unsupported(self, linear_only: bool) -> list[str]:
        """The nodes a linear-relaxation method (CROWN, MILP) cannot handle."""
        if not linear_only:
            return []
        return [n.where for n in self.nodes if n.op is not None and not n.op.crown]

    def flops(self) -> list[int]:
        """Multiply-adds per sample of each node's operation."""
        return [0 if n.op is None else n.op.flops() for n in self.nodes]

    def is_chain(self) -> bool:
        """Every node reads only the previous one (a feed-forward network, no branches)."""
        return all(n.inputs == (n.index - 1,) for n in self.nodes[1:])


def _build(model: nn.Module, example: Tensor) -> BoundGraph:
    gm = _trace(model)
    probe = torch.zeros(2, *example.shape[1:], dtype=example.dtype, device=example.device)
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        recorder.run(probe)
    builder = _GraphBuilder(gm, recorder.values)
    for n in gm.graph.nodes:
        builder.add(n)
    if builder.output is None:
        raise ValueError("the traced model has no output")
    return BoundGraph(builder.nodes, builder.output)


@dataclass
class _Const:
    """A constant operand: a live tensor getter or a Python number."""

    get: Callable[[], Any]


class _GraphBuilder:
    """Turns fx nodes into :class:`BoundNode` objects, one at a time."""

    def __init__(self, gm: fx.GraphModule, values: Mapping[fx.Node, Any]) -> None:
        self.gm = gm
        self.values = values
        self.nodes: list[BoundNode] = []
        self.index: dict[fx.Node, int] = {}
        self.consts: dict[fx.Node, _Const] = {}
        self.meta: set[fx.Node] = set()
        self.output: int | None = None

    # ---- node kinds

    def add(self, n: fx.Node) -> None:
        if n.op == "placeholder":
            self._input(n)
        elif n.op == "get_attr":
            self.consts[n] = _Const(lambda t=n.target: _fetch_attr(self.gm, t))
        elif n.op == "output":
            self._output(n)
        elif not self._is_batch_tensor(n):
            self._constant_or_meta(n)
        else:
            self._operation(n)

    def _input(self, n: fx.Node) -> None:
        if self.nodes:
            raise ValueError("bound propagation supports models with one input tensor")
        self.index[n] = 0
        self.nodes.append(BoundNode(0, None, (), self._shape(n)))

    def _output(self, n: fx.Node) -> None:
        arg = n.args[0]
        if not isinstance(arg, fx.Node) or arg not in self.index:
            raise ValueError(
                "bound propagation needs a model returning one logits tensor [N, classes], got "
                f"{type(self.values.get(arg, arg)).__name__}"
            )
        if len(self.nodes[self.index[arg]].shape) != 1:
            raise ValueError(
                f"the model's output has per-sample shape {self.nodes[self.index[arg]].shape}; "
                "bound methods need logits [N, classes]"
            )
        self.output = self.index[arg]

    def _constant_or_meta(self, n: fx.Node) -> None:
        """A value that does not depend on the batch: a constant expression or a size."""
        if any(
            isinstance(a, fx.Node) and (a in self.index or a in self.meta) for a in _node_args(n)
        ):
            self.meta.add(n)  # a size or shape read from a tensor: only reshapes may use it
            return
        self.consts[n] = _Const(lambda node=n: self._evaluate_constant(node))

    def _evaluate_constant(self, n: fx.Node) -> Any:
        args = fx.node.map_arg(n.args, lambda a: self.consts[a].get())
        kwargs = fx.node.map_arg(n.kwargs, lambda a: self.consts[a].get())
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return self.gm.get_submodule(n.target)(*args, **kwargs)

    def _operation(self, n: fx.Node) -> None:
        tensors = [a for a in _node_args(n) if isinstance(a, fx.Node) and a in self.index]
        where = _where(n, self.gm)
        in_shapes = [self.nodes[self.index[a]].shape for a in tensors]
        op = self._make_op(n, where, in_shapes, self._shape(n))
        idx = len(self.nodes)
        self.index[n] = idx
        self.nodes.append(BoundNode(idx, op, tuple(self.index[a] for a in tensors), op.out_shape))

    # ---- helpers

    def _is_batch_tensor(self, n: fx.Node) -> bool:
        v = self.values.get(n)
        return (
            isinstance(v, Tensor)
            and v.dim() >= 1
            and v.shape[0] == 2
            and _reads_input(n, self.index)
        )

    def _shape(self, n: fx.Node) -> tuple[int, ...]:
        return tuple(self.values[n].shape[1:])

    def _make_op(self, n, where, in_shapes, out_shape) -> BoundOp:
        if n.op == "call_module":
            return _module_op(self.gm.get_submodule(n.target), where, in_shapes, out_shape)
        return _function_op(n, where, in_shapes, out_shape, self)

    def const_operand(self, a: Any, where: str, out_shape: tuple[int, ...]) -> Callable[[], Tensor]:
        """A getter of a constant operand as a tensor broadcastable to ``out_shape``."""
        if isinstance(a, fx.Node):
            if a not in self.consts:
                raise ValueError(f"{where}: an operand depends on the input in an unsupported way")
            get = self.consts[a].get
        elif isinstance(a, int | float):
            get = lambda v=float(a): torch.tensor(v)  # noqa: E731
        else:
            raise ValueError(f"{where}: unsupported operand {a!r}")
        return lambda: _per_sample(torch.as_tensor(get()), out_shape, where)


def _node_args(n: fx.Node) -> list[Any]:
    return [*n.args, *n.kwargs.values()]


def _reads_input(n: fx.Node, index: Mapping[fx.Node, int]) -> bool:
    return any(isinstance(a, fx.Node) and a in index for a in _node_args(n))


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _per_sample(c: Tensor, shape: tuple[int, ...], where: str) -> Tensor:
    """A constant without its batch dimension (which must be 1), broadcastable to ``shape``."""
    if c.dim() == len(shape) + 1:
        if c.shape[0] != 1:
            raise ValueError(f"{where}: a constant operand varies along the batch dimension")
        c = c[0]
    try:
        torch.broadcast_shapes(c.shape, shape)
    except RuntimeError as err:
        raise ValueError(f"{where}: constant of shape {tuple(c.shape)} vs {shape}") from err
    return c


def _where(n: fx.Node, gm: fx.GraphModule) -> str:
    """``"fc1 (Linear)"`` for a layer; ``"relu (in layer1.0)"`` for a function inside a module."""
    if n.op == "call_module":
        return f"{n.target} ({type(gm.get_submodule(n.target)).__name__})"
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
    stack = n.meta.get("nn_module_stack") or {}
    inside = list(stack)[-1] if stack else ""
    return f"{name} (in {inside})" if inside else str(name)


# --------------------------------------------------------------------------- layer rules


def _module_op(m: nn.Module, where: str, in_shapes, out_shape) -> BoundOp:
    """The :class:`BoundOp` of a whole layer.

    Raises:
        ValueError: An unsupported layer type or setting, named.
    """
    for layer_type, factory in _CUSTOM_LAYERS.items():
        if type(m) is layer_type:
            return factory(m, where, in_shapes, out_shape)
    if isinstance(m, nn.Linear):
        bias = (lambda: m.bias) if m.bias is not None else None
        return LinearOp(where, in_shapes, out_shape, lambda: m.weight, bias)
    if isinstance(m, nn.Conv2d):
        return Conv2dOp(where, in_shapes, out_shape, m)
    if isinstance(m, nn.ReLU):
        return ReLUOp(where, in_shapes, out_shape)
    if isinstance(m, nn.Flatten | nn.Unflatten):
        return ReshapeOp(where, in_shapes, out_shape)
    if isinstance(m, nn.Identity | nn.modules.dropout._DropoutNd):
        return IdentityOp(where, in_shapes, out_shape)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return _batchnorm_op(m, where, in_shapes, out_shape)
    if isinstance(m, nn.AvgPool2d):
        _check_avg_pool(where, m.ceil_mode, m.count_include_pad, m.padding, m.divisor_override)
        return AvgPoolOp(where, in_shapes, out_shape, m.kernel_size, m.stride, m.padding)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return _adaptive_pool_op(where, in_shapes, out_shape)
    if isinstance(m, nn.MaxPool2d):
        return MaxPoolOp(where, in_shapes, out_shape, m)
    raise ValueError(_unsupported(where))


def _unsupported(where: str) -> str:
    return (
        f"bound propagation does not support {where}; supported: Linear, Conv2d, ReLU, "
        "Flatten, BatchNorm (eval), AvgPool2d, AdaptiveAvgPool2d, Dropout (eval), MaxPool2d "
        "(ibp only), residual additions and constant scaling/shifting; register a handler "
        "with defenses.bounds.register_bound_layer for other layers"
    )


def _batchnorm_op(m: nn.modules.batchnorm._BatchNorm, where: str, in_shapes, out_shape) -> BoundOp:
    if m.running_mean is None or m.running_var is None:
        raise ValueError(f"{where}: BatchNorm without running statistics cannot be bounded")
    extra = len(out_shape) - 1  # dimensions after the channel one

    def scale() -> Tensor:
        s = torch.rsqrt(m.running_var + m.eps)
        s = s * m.weight if m.weight is not None else s
        return s.reshape(-1, *([1] * extra))

    def shift() -> Tensor:
        s = torch.rsqrt(m.running_var + m.eps)
        s = s * m.weight if m.weight is not None else s
        b = -m.running_mean * s + (m.bias if m.bias is not None else 0.0)
        return b.reshape(-1, *([1] * extra))

    return ElementwiseAffineOp(where, in_shapes, out_shape, scale, shift)


def _check_avg_pool(where: str, ceil_mode: bool, count_pad: bool, padding, divisor) -> None:
    if ceil_mode or divisor is not None or (not count_pad and any(_as_pair(padding))):
        raise ValueError(
            f"{where}: average pooling with ceil_mode, divisor_override or "
            "count_include_pad=False with padding is not supported"
        )


def _as_pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _adaptive_pool_op(where: str, in_shapes, out_shape) -> BoundOp:
    (_, h, w), (_, oh, ow) = in_shapes[0], out_shape
    if h % oh or w % ow:
        raise ValueError(
            f"{where}: adaptive average pooling from {h}x{w} to {oh}x{ow} has uneven windows; "
            "only outputs that divide the input are supported"
        )
    kernel = (h // oh, w // ow)
    return AvgPoolOp(where, in_shapes, out_shape, kernel, kernel, 0)


_RELU = {F.relu, torch.relu, torch.nn.functional.relu}
_RESHAPE_FUNCS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze", "unsqueeze"}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_ARITH = {
    operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
    operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
    operator.neg: "neg", torch.neg: "neg", operator.iadd: "add", operator.isub: "sub",
    operator.imul: "mul", operator.itruediv: "div",
}  # fmt: skip


def _function_op(n: fx.Node, where, in_shapes, out_shape, b: _GraphBuilder) -> BoundOp:
    """The :class:`BoundOp` of a traced function or method call.

    Raises:
        ValueError: An unsupported function, named with the module it sits in.
    """
    target = n.target
    if n.op == "call_method":
        if target == "relu":
            return ReLUOp(where, in_shapes, out_shape)
        if target in _RESHAPE_METHODS:
            return ReshapeOp(where, in_shapes, out_shape)
        if target in _IDENTITY_METHODS:
            return IdentityOp(where, in_shapes, out_shape)
        arith = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "neg": "neg"}
        if target in arith:
            return _arith_op(arith[target], n, where, in_shapes, out_shape, b)
        raise ValueError(_unsupported(f"the method .{target}() at {where}"))
    if target in _RELU:
        return ReLUOp(where, in_shapes, out_shape)
    if target in _RESHAPE_FUNCS:
        return ReshapeOp(where, in_shapes, out_shape)
    if target in _ARITH:
        return _arith_op(_ARITH[target], n, where, in_shapes, out_shape, b)
    return _pool_or_dropout(n, where, in_shapes, out_shape)


def _pool_or_dropout(n: fx.Node, where, in_shapes, out_shape) -> BoundOp:
    target, args, kwargs = n.target, n.args, n.kwargs
    if target is F.adaptive_avg_pool2d:
        return _adaptive_pool_op(where, in_shapes, out_shape)
    if target is F.avg_pool2d:
        p = _bind(["input", "kernel_size", "stride", "padding", "ceil_mode",
                   "count_include_pad", "divisor_override"], args, kwargs)  # fmt: skip
        stride = p.get("stride") or p["kernel_size"]
        padding = p.get("padding", 0)
        _check_avg_pool(where, p.get("ceil_mode", False), p.get("count_include_pad", True),
                        padding, p.get("divisor_override"))  # fmt: skip
        return AvgPoolOp(where, in_shapes, out_shape, p["kernel_size"], stride, padding)
    if target is F.max_pool2d:
        rest = dict(kwargs)
        pool = lambda x: F.max_pool2d(x, *args[1:], **rest)  # noqa: E731
        return MaxPoolOp(where, in_shapes, out_shape, pool)
    if target is F.dropout:
        p = _bind(["input", "p", "training", "inplace"], args, kwargs)
        if p.get("training", True):
            raise ValueError(f"{where}: dropout in training mode is random; evaluate in eval mode")
        return IdentityOp(where, in_shapes, out_shape)
    name = getattr(target, "__name__", str(target))
    raise ValueError(_unsupported(f"the function {name} at {where}"))


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(zip(names, args, strict=False))
    out.update(kwargs)
    return out


def _arith_op(kind: str, n: fx.Node, where, in_shapes, out_shape, b: _GraphBuilder) -> BoundOp:
    """``+ - * /`` and negation: two tensors (add/sub) or a tensor and a constant."""
    args = list(n.args)
    tensor_pos = [i for i, a in enumerate(args) if isinstance(a, fx.Node) and a in b.index]
    if len(tensor_pos) == 2:
        if kind not in ("add", "sub"):
            raise ValueError(f"{where}: a product or quotient of two activations is not linear")
        return AddOp(where, in_shapes, out_shape, 1.0 if kind == "add" else -1.0)
    if kind == "neg":
        one = lambda: torch.ones(())  # noqa: E731
        return ElementwiseAffineOp(where, in_shapes, out_shape, lambda: -one(), lambda: 0 * one())
    (pos,) = tensor_pos
    if "alpha" in n.kwargs:
        raise ValueError(f"{where}: add/sub with alpha= is not supported")
    const = b.const_operand(args[1 - pos], where, out_shape)
    return _affine_with_const(kind, pos, const, where, in_shapes, out_shape)


def _affine_with_const(kind, pos, const, where, in_shapes, out_shape) -> BoundOp:
    """``x + c``, ``x - c``, ``c - x``, ``x * c``, ``x / c`` as ``x * scale + shift``."""

    def ones() -> Tensor:
        return torch.ones((), dtype=const().dtype, device=const().device)

    if kind == "add":
        scale, shift = ones, const
    elif kind == "sub" and pos == 0:
        scale, shift = ones, lambda: -const()
    elif kind == "sub":
        scale, shift = (lambda: -ones()), const
    elif kind == "mul":
        scale, shift = const, lambda: 0 * ones()
    elif pos == 0:  # x / c
        scale, shift = (lambda: 1 / const()), lambda: 0 * ones()
    else:
        raise ValueError(f"{where}: dividing by an activation is not linear")
    return ElementwiseAffineOp(where, in_shapes, out_shape, scale, shift)


def total_flops(graph: BoundGraph) -> int:
    """Multiply-adds of one forward pass of one sample (at least 1)."""
    return max(1, sum(graph.flops()))


def prefix_flops(graph: BoundGraph) -> list[int]:
    """Per node: multiply-adds of the operations up to and including it."""
    out, acc = [], 0
    for f in graph.flops():
        acc += f
        out.append(acc)
    return out


def numel(shape: Sequence[int]) -> int:
    """Number of elements of a per-sample shape."""
    return math.prod(shape)


__all__ = [
    "BoundGraph",
    "BoundNode",
    "check_bounded_model",
    "numel",
    "prefix_flops",
    "register_bound_layer",
    "total_flops",
]
