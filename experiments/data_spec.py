"""A run's ``dataset`` node as a data spec, and the eps grids that default to the data.

The ``dataset`` config group names data three ways, all read by
:func:`robustbench_local.resolve_dataset` (the same specs as the Python API, the benchmark and
the gates):

- a registered name: ``dataset=mnist`` (``dataset.name``);
- a file or folder: ``dataset=files dataset.path=my_images/`` (images in class subfolders) or
  ``dataset.path=test.npz`` (arrays ``x``, ``y`` and optionally ``x_train``, ``y_train``);
  a relative path is relative to the folder the command started in;
- a function: ``dataset=custom dataset._target_=mypkg.data.load_test`` with its keyword
  arguments as the node's other keys (``+dataset.n=100``).

``eval.eps.<norm>: auto`` (what ``dataset=files`` and ``dataset=custom`` default to) is the
data's default grid, :func:`robustbench_local.default_eps_grid`: the CIFAR-style
``1/255 ... 16/255`` (linf) and ``0.125 ... 1`` (l2) for user data, the grid of
``dataset/<name>.yaml`` for a registered dataset. A grid written out (``eval.eps.linf=[...]`` or
``dataset.eps.linf=[...]``) is used as it is.

Example:
    >>> request = data_request(cfg.dataset)      # dataset=files dataset.path=pngs
    >>> request.spec, request.kwargs
    ('/home/me/pngs', {})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

import robustbench_local as rbl
from experiments.resolvers import parse_number
from experiments.targets import launch_path, target_object

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULT_NORMS = ("linf", "l2")
"""The norms ``eval.eps: auto`` (a whole grid mapping left to the data) gives grids for."""
SETTINGS = ("_target_", "name", "path", "data_dir", "train_subset", "val_size", "eps")
"""The keys of a dataset node that are the run's; a function's other keys are its arguments."""


@dataclass(frozen=True)
class DataRequest:
    """What :func:`robustbench_local.resolve_dataset` is called with for a dataset node.

    Attributes:
        spec: A registered name, an absolute path or an import path ``module:function``.
        data_dir: A registered dataset's local mirror (``dataset.data_dir``).
        kwargs: A function's keyword arguments.
    """

    spec: str
    data_dir: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def _required(node: DictConfig, key: str, example: str) -> Any:
    """``node[key]``, which must be set.

    Raises:
        ValueError: It is missing (``???``) or null; the message shows an override.
    """
    if OmegaConf.is_missing(node, key) or node.get(key) is None:
        raise ValueError(f"dataset.{key} is not set: add e.g. {example}")
    return node[key]


def data_request(node: DictConfig) -> DataRequest:
    """The spec a dataset node names (see the module docstring).

    Raises:
        ValueError: Both ``path`` and ``_target_``, neither nor a name, a ``_target_`` that
            does not import, or settings that do not apply to a path.
    """
    keys = set(node.keys())
    has_path, has_target = "path" in keys, "_target_" in keys
    if has_path and has_target:
        raise ValueError(
            "the dataset node has both path and _target_: use dataset=files dataset.path=... "
            "or dataset=custom dataset._target_=..."
        )
    extra = {str(k): node[k] for k in node if k not in SETTINGS}
    if has_path:
        path = _required(node, "path", "dataset.path=my_images/ (or a .npz / .pt file)")
        if extra:
            raise ValueError(
                f"dataset={node.get('name') or 'files'} has no setting(s) "
                f"{', '.join(sorted(extra))}; its settings are {', '.join(SETTINGS[1:])}"
            )
        return DataRequest(str(launch_path(str(path))))
    if has_target:
        target = _required(node, "_target_", "dataset._target_=mypkg.data.load_test")
        _, path = target_object(str(target), "dataset")
        kwargs = OmegaConf.to_container(OmegaConf.create(extra), resolve=True)
        return DataRequest(path, kwargs=dict(kwargs))  # type: ignore[arg-type]
    name = _required(node, "name", "dataset=mnist, dataset=files or dataset=custom")
    return DataRequest(str(name), data_dir=node.get("data_dir"))


def resolve(node: DictConfig) -> rbl.ResolvedDataset:
    """Load the data a dataset node names, with its info (:func:`data_request`).

    Raises:
        ValueError, FileNotFoundError: As :func:`data_request` and
            :func:`robustbench_local.resolve_dataset` (unknown names, missing files, labels
            that are not integers, images that are not in [0, 1] or 0-255...).
    """
    request = data_request(node)
    return rbl.resolve_dataset(request.spec, request.data_dir, kwargs=request.kwargs)


def is_auto(value: Any) -> bool:
    """Whether a grid setting is ``auto`` (the data's default grid)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def is_user_data(node: DictConfig) -> bool:
    """Whether the dataset node names the user's data (a path or a function)."""
    return bool({"path", "_target_"} & set(node.keys()))


def _auto_grid(cfg: DictConfig, norm: str, info: rbl.DatasetInfo | None) -> list[float]:
    """The grid ``eval.eps.<norm>: auto`` stands for.

    Raises:
        ValueError: The user's data is not loaded yet (``info`` None), or a registered
            dataset without a grid of that norm in its config.
    """
    if info is not None:
        grid = rbl.default_eps_grid(info, norm)
        if grid is not None:
            return list(grid)
    elif is_user_data(cfg.dataset):
        raise ValueError(
            f"eval.eps.{norm}=auto is the default grid of the data, known once it is loaded: "
            f"call pipeline.load_data(cfg) first, or give a grid (eval.eps.{norm}=[...])"
        )
    own = (cfg.dataset.get("eps") or {}).get(norm)
    if own is None or is_auto(own):
        raise ValueError(
            f"eval.eps.{norm}=auto but dataset {cfg.dataset.get('name')!r} has no {norm} grid; "
            f"give one: eval.eps.{norm}=[...]"
        )
    return [parse_number(v) for v in ([own] if isinstance(own, str | int | float) else own)]


def resolve_auto_eps(cfg: DictConfig, info: rbl.DatasetInfo | None = None) -> dict[str, list]:
    """Write the data's default grid into every ``eval.eps.<norm>`` set to ``auto``.

    ``eval.eps: auto`` (the whole mapping) stands for ``{linf: auto, l2: auto}``. Grids written
    out are kept. Calling it again changes nothing.

    Args:
        cfg: The run's config (``eval.eps`` is updated in place).
        info: The loaded data's info (``None`` before loading: registered datasets only).

    Returns:
        ``norm -> grid`` of the grids it set (empty when none was ``auto``).

    Raises:
        ValueError: See :func:`_auto_grid`.
    """
    eps = cfg.eval.get("eps")
    auto_all = is_auto(eps)
    items: Mapping[str, Any] = dict.fromkeys(DEFAULT_NORMS, AUTO) if auto_all else eps or {}
    grids = {str(n): _auto_grid(cfg, str(n), info) for n, v in items.items() if is_auto(v)}
    if not grids:
        return {}
    with open_dict(cfg):
        if auto_all:
            cfg.eval.eps = {}
        for norm, grid in grids.items():
            cfg.eval.eps[norm] = grid
    if info is not None and info.source != "registered":
        shown = "; ".join(f"{n} [{', '.join(f'{e:.4g}' for e in g)}]" for n, g in grids.items())
        logger.info(
            "eps grids for %s data %r: %s (the default for user data, CIFAR-style; set "
            "eval.eps.<norm> to choose)", info.source, info.name, shown,
        )  # fmt: skip
    return grids


def fill_name(cfg: DictConfig, info: rbl.DatasetInfo) -> None:
    """Set a null ``dataset.name`` to the data's own name (folder name, file stem, function)."""
    if cfg.dataset.get("name") is None:
        with open_dict(cfg):
            cfg.dataset.name = info.name


__all__ = [
    "AUTO",
    "DEFAULT_NORMS",
    "SETTINGS",
    "DataRequest",
    "data_request",
    "fill_name",
    "is_auto",
    "is_user_data",
    "resolve",
    "resolve_auto_eps",
]
