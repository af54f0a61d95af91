"""A small model zoo with normalisation inside, and safe checkpoint I/O.

Every model takes float ``[N, C, H, W]`` inputs in ``[0, 1]`` and returns logits ``[N, classes]``;
its first layer is a :class:`Normalize` holding the dataset's mean and std, so attacks work in
input units. ``create_model`` sets ``arch`` (the registry name), ``arch_kwargs`` (what rebuilds
it), ``num_classes``, ``dataset`` and ``input_shape`` on the module. ``dropout`` adds an
``nn.Dropout`` right before the last linear layer.

Checkpoints (``save_checkpoint``/``load_checkpoint``) are ``torch.save`` files of plain data
(architecture name, its kwargs, the state dict, a SHA-256 digest, user metadata) read back with
``torch.load(weights_only=True)``; the digest is verified and the architecture checked.

Example:
    >>> model = create_model("digits_mlp")
    >>> model(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.
    Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from attacks.registry import Registry
from defenses.storage import atomic_torch_save
from robustbench_local.data import dataset_info

FORMAT_VERSION = 1
MODELS: Registry[nn.Module] = Registry("model")
_CKPT_KEYS = ("format_version", "arch", "kwargs", "state_dict", "digest", "meta")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers (saved, moved with the model).

    Args:
        mean: Per-channel means (a sequence of length C, or a float for all channels).
        std: Per-channel standard deviations, all > 0.

    Raises:
        ValueError: If lengths differ or a std is not positive.

    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        s = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if m.numel() != s.numel():
            raise ValueError(f"mean has {m.numel()} channels but std has {s.numel()}")
        if not bool((s > 0).all()):
            raise ValueError(f"std must be positive, got {s.tolist()}")
        self.register_buffer("mean", m.view(1, -1, 1, 1))
        self.register_buffer("std", s.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``[N, C, H, W]``."""
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        """Show the statistics in ``repr(model)``."""
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


# --------------------------------------------------------------------------- registry API


def model_names(pattern: str = "*") -> list[str]:
    """Sorted registered architecture names (shell-style ``pattern``)."""
    return MODELS.names(pattern)


def create_model(
    name: str, *, num_classes: int | None = None, dropout: float = 0.0, **kw: Any
) -> nn.Module:
    """Build a registered architecture (randomly initialised; seed with ``torch.manual_seed``).

    Args:
        name: One of :func:`model_names`.
        num_classes: Output classes; default: the dataset's.
        dropout: Dropout rate before the last linear layer, in ``[0, 1)``.
        **kw: Architecture options (e.g. ``dataset="fashion_mnist"`` for the MNIST models,
            ``depth``/``width`` for ``wide_resnet``).

    Returns:
        The model, in training mode, with ``arch``, ``arch_kwargs``, ``num_classes``,
        ``dataset`` and ``input_shape`` attributes.

    Raises:
        ValueError: Unknown name or invalid option values.
        TypeError: An option the architecture does not take (the accepted ones are listed).

    """
    factory = MODELS.get(name)
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}")
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        accepted = sorted(p for p in params if p not in ("num_classes", "dropout"))
        raise TypeError(
            f"model {name!r} does not take {', '.join(unknown)}; it accepts "
            f"num_classes, dropout, {', '.join(accepted)}"
        )
    dataset = kw.get("dataset", params["dataset"].default)
    info = dataset_info(dataset)
    num_classes = info.num_classes if num_classes is None else num_classes
    model = factory(num_classes=num_classes, dropout=float(dropout), **kw)
    model.arch = name.lower()
    model.arch_kwargs = {"num_classes": num_classes, "dropout": float(dropout), **kw}
    model.num_classes = num_classes
    model.dataset = info.name
    model.input_shape = info.shape
    return model


def _normalize_for(dataset: str, shape: tuple[int, int, int], arch: str) -> Normalize:
    """The Normalize layer for ``dataset``, checking its input shape fits the architecture."""
    info = dataset_info(dataset)
    if info.shape != shape:
        raise ValueError(
            f"{arch} takes inputs of shape {shape} but dataset {dataset!r} has {info.shape}; "
            "pick a model made for that dataset"
        )
    return Normalize(info.mean, info.std)


# --------------------------------------------------------------------------- small models


@MODELS.register("digits_mlp")
def digits_mlp(
    *, num_classes: int, dropout: float, dataset: str = "digits", hidden: int = 64
) -> nn.Module:
    """Two-hidden-layer MLP for scikit-learn's 8x8 digits (``[N, 1, 8, 8]``)."""
    return nn.Sequential(
        OrderedDict(
            normalize=_normalize_for(dataset, (1, 8, 8), "digits_mlp"),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, hidden),
            relu1=nn.ReLU(),
            fc2=nn.Linear(hidden, hidden),
            relu2=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc3=nn.Linear(hidden, num_classes),
        )
    )


@MODELS.register("mnist_small_cnn")
def mnist_small_cnn(*, num_classes: int, dropout: float, dataset: str = "mnist") -> nn.Module:
    """The 2-conv CNN Wong et al. (2020) train on MNIST (FGSM-RS "fast" adversarial training).

    conv 16 4x4/2 pad 1, ReLU, conv 32 4x4/2 pad 1, ReLU, flatten, fc 100, ReLU, fc classes.

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020 (github.com/locuslab/fast_adversarial, ``mnist_net``).

    """
    return nn.Sequential(
        OrderedDict(
            normalize=_normalize_for(dataset, (1, 28, 28), "mnist_small_cnn"),
            conv1=nn.Conv2d(1, 16, 4, stride=2, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 4, stride=2, padding=1),
            relu2=nn.ReLU(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(32 * 7 * 7, 100),
            relu3=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc2=nn.Linear(100, num_classes),
        )
    )


@MODELS.register("mnist_cnn")
def mnist_cnn(*, num_classes: int, dropout: float, dataset: str = "mnist") -> nn.Module:
    """The MNIST CNN of Madry et al. (2018) (the MNIST challenge model).

    conv 32 5x5 (same), ReLU, maxpool 2, conv 64 5x5 (same), ReLU, maxpool 2, fc 1024, ReLU,
    fc classes.

    References:
        Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
        Adversarial Attacks", ICLR 2018 (github.com/MadryLab/mnist_challenge).

    """
    return nn.Sequential(
        OrderedDict(
            normalize=_normalize_for(dataset, (1, 28, 28), "mnist_cnn"),
            conv1=nn.Conv2d(1, 32, 5, padding=2),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(32, 64, 5, padding=2),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64 * 7 * 7, 1024),
            relu3=nn.ReLU(),
            dropout=nn.Dropout(dropout),
            fc2=nn.Linear(1024, num_classes),
        )
    )


# --------------------------------------------------------------------------- CIFAR ResNets


class PreActBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    The same block serves PreAct ResNets (He et al., ECCV 2016) and Wide ResNets (Zagoruyko &
    Komodakis, BMVC 2016): a 1x1 convolution on the pre-activated input is the shortcut when the
    shape changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output of the block."""
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 inputs with normalisation inside."""

    def __init__(
        self,
        num_blocks: Sequence[int],
        *,
        num_classes: int,
        dropout: float,
        normalize: Normalize,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
            blocks = []
            for stride in [1 if i == 0 else 2] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.bn = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for inputs ``[N, 3, 32, 32]`` in ``[0, 1]``."""
        out = self.conv1(self.normalize(x))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.linear(self.dropout(out))


@MODELS.register("preact_resnet18")
def preact_resnet18(*, num_classes: int, dropout: float, dataset: str = "cifar10") -> nn.Module:
    """PreAct ResNet-18 for CIFAR-10 (``[N, 3, 32, 32]``), as in Wong et al. (2020).

    References:
        He, Zhang, Ren & Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016.

    """
    norm = _normalize_for(dataset, (3, 32, 32), "preact_resnet18")
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, dropout=dropout, normalize=norm)


WideBasicBlock = PreActBlock  # the WRN basic block is the pre-activation block


class WideResNet(nn.Module):
    """WRN-depth-width for 32x32 inputs with normalisation inside."""

    def __init__(
        self,
        depth: int,
        width: int,
        *,
        num_classes: int,
        dropout: float,
        normalize: Normalize,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.normalize = normalize
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        groups = []
        for i in range(3):
            blocks = [
                WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], s)
                for j, s in enumerate([1 if i == 0 else 2] + [1] * (n - 1))
            ]
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, classes]`` for inputs ``[N, 3, 32, 32]`` in ``[0, 1]``."""
        out = self.block3(self.block2(self.block1(self.conv1(self.normalize(x)))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn(out)), 1).flatten(1)
        return self.fc(self.dropout(out))


@MODELS.register("wide_resnet")
def wide_resnet(
    *, num_classes: int, dropout: float, dataset: str = "cifar10", depth: int = 28, width: int = 10
) -> nn.Module:
    """Wide ResNet WRN-``depth``-``width`` for CIFAR-10 (default WRN-28-10).

    ``depth`` must be ``6n + 4`` (10, 16, 22, 28, 34, ...); ``width`` multiplies the channels.
    Dropout here sits before the classifier (the paper's in-block dropout is not used).

    References:
        Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.

    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet depth must be 6n+4 >= 10 (10, 16, 22, 28, ...), got {depth}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"wide_resnet width must be a positive integer, got {width!r}")
    norm = _normalize_for(dataset, (3, 32, 32), "wide_resnet")
    return WideResNet(depth, width, num_classes=num_classes, dropout=dropout, normalize=norm)


# --------------------------------------------------------------------------- checkpoints


def weights_digest(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over the state dict: sorted names, dtypes, shapes and raw bytes.

    Args:
        model: A module or a state dict.

    Returns:
        64 hex characters; equal weights (and buffers) give equal digests on any device.

    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def _check_plain(value: Any, where: str) -> None:
    """Metadata and kwargs must be plain data so that ``weights_only`` loading accepts them."""
    if value is None or isinstance(value, bool | int | float | str):
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold plain data only "
        "(None, bool, int, float, str, list, tuple, dict): convert it first"
    )


def save_checkpoint(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """Save weights, architecture and metadata to ``path`` atomically; return the digest.

    Args:
        model: The model (its ``arch``/``arch_kwargs`` from :func:`create_model` are stored).
        path: Destination file (parent folders are created).
        arch: Architecture name for a model not built by :func:`create_model`; if the model has
            an ``arch`` it must agree.
        meta: Plain JSON-like metadata (training recipe, metrics, ...).

    Returns:
        The :func:`weights_digest` of the saved state dict.

    Raises:
        ValueError: No architecture name, or ``arch`` disagrees with ``model.arch``.
        TypeError: ``meta`` or the model's kwargs are not plain data.

    """
    model_arch = getattr(model, "arch", None)
    if arch is not None and model_arch is not None and arch.lower() != model_arch:
        raise ValueError(f"arch={arch!r} but the model is a {model_arch!r}; drop arch=")
    arch = (arch or model_arch or "").lower()
    if not arch:
        raise ValueError("the model has no `arch` attribute: pass arch= (the architecture name)")
    kwargs = dict(getattr(model, "arch_kwargs", {}))
    meta = dict(meta or {})
    _check_plain(kwargs, "model.arch_kwargs")
    _check_plain(meta, "meta")
    state = OrderedDict((k, v.detach().cpu().clone()) for k, v in model.state_dict().items())
    digest = weights_digest(state)
    ckpt = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "kwargs": kwargs,
        "state_dict": state,
        "digest": digest,
        "meta": meta,
    }
    atomic_torch_save(ckpt, path)
    return digest


def _read_checkpoint(path: Path, map_location: Any) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} does not exist; check the path (save one with save_checkpoint)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise ValueError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or holding objects "
            f"other than plain data and tensors): {err}"
        ) from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CKPT_KEYS):
        raise ValueError(
            f"{path} is not a robustbench_local checkpoint: expected a dict with keys "
            f"{', '.join(_CKPT_KEYS)}; write one with save_checkpoint"
        )
    if ckpt["format_version"] != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format {ckpt['format_version']!r}; this version reads "
            f"{FORMAT_VERSION}"
        )
    if weights_digest(ckpt["state_dict"]) != ckpt["digest"]:
        raise ValueError(
            f"{path}: the weights do not match the stored digest {ckpt['digest']}; the file "
            "is corrupt or was tampered with, do not use it"
        )
    return ckpt


def _describe(arch: str | None, kwargs: Mapping[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    return f"{arch or 'an unnamed model'}({args})"


def _check_compatible(model: nn.Module, ckpt: Mapping[str, Any], path: Path) -> None:
    theirs = _describe(ckpt["arch"], ckpt["kwargs"])
    ours = _describe(getattr(model, "arch", None), getattr(model, "arch_kwargs", {}))
    model_arch = getattr(model, "arch", None)
    if model_arch is not None and model_arch != ckpt["arch"]:
        raise ValueError(
            f"{path} holds a {theirs} but the model is a {ours}; load it into a "
            f"{ckpt['arch']!r} model or pass model=None to rebuild it"
        )
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    diffs = sorted(
        f"{k}: checkpoint {found.get(k, 'missing')} vs model {expected.get(k, 'missing')}"
        for k in set(expected) | set(found)
        if found.get(k) != expected.get(k)
    )
    if diffs:
        raise ValueError(
            f"{path} holds a {theirs} whose weights do not fit the model, a {ours} "
            f"({len(diffs)} mismatches, e.g. {'; '.join(diffs[:3])}); build the model with "
            "the checkpoint's kwargs or pass model=None"
        )


def load_checkpoint(
    path: str | os.PathLike[str], model: nn.Module | None = None, *, map_location: Any = "cpu"
) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint`, verifying its digest.

    Args:
        path: Checkpoint file.
        model: Load into this model (its architecture must match; its train/eval mode is
            kept). If ``None``, the stored architecture is rebuilt and returned in eval mode.
        map_location: Passed to ``torch.load``; a rebuilt model is moved there if it is a
            device or device string.

    Returns:
        The model, with ``checkpoint_meta`` (the stored ``meta``) and ``checkpoint_digest``.

    Raises:
        FileNotFoundError: No file at ``path``.
        ValueError: Corrupt or tampered file, or a checkpoint for another architecture.

    """
    path = Path(path)
    ckpt = _read_checkpoint(path, map_location)
    if model is None:
        if ckpt["arch"] not in MODELS:
            raise ValueError(
                f"{path} holds an {ckpt['arch']!r} model, which is not registered (known: "
                f"{', '.join(model_names())}); build it yourself and pass model="
            )
        model = create_model(ckpt["arch"], **ckpt["kwargs"]).eval()
        if isinstance(map_location, str | torch.device):
            model = model.to(map_location)
    _check_compatible(model, ckpt, path)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    model.checkpoint_meta = ckpt["meta"]
    model.checkpoint_digest = ckpt["digest"]
    return model


__all__ = [
    "MODELS",
    "Normalize",
    "PreActResNet",
    "WideResNet",
    "create_model",
    "load_checkpoint",
    "model_names",
    "save_checkpoint",
    "weights_digest",
]
