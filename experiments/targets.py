"""What a config's ``_target_`` and paths name: the object, its import path, the file.

Hydra writes targets dotted (``mypkg.nets.Net``); :mod:`robustbench_local` records code by its
import path ``module:QualName`` (``mypkg.nets:Net``, :mod:`robustbench_local.imports`). The
dataset and model nodes of a run (:mod:`experiments.data_spec`, :mod:`experiments.model_spec`)
read their targets and paths through these helpers, so a user's package is named the same way
in a config, a checkpoint and an MLflow model.

Example:
    >>> target_object("collections.OrderedDict", "model")
    (<class 'collections.OrderedDict'>, 'collections:OrderedDict')
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from robustbench_local.imports import import_object, is_import_path


def _module_missing(err: ModuleNotFoundError, module: str) -> bool:
    """Whether ``err`` says ``module`` itself (or a package above it) does not exist."""
    name = err.name or ""
    return bool(name) and (module == name or module.startswith(f"{name}."))


def target_object(target: str, what: str) -> tuple[Any, str]:
    """The object a dotted ``_target_`` (or an import path ``module:Name``) names, and its path.

    Args:
        target: ``mypkg.nets.Net`` (Hydra's form) or ``mypkg.nets:Net``.
        what: What the target builds, for messages (``"model"``, ``"dataset"``).

    Returns:
        ``(object, "module:QualName")``; the path is the one the target was found at.

    Raises:
        ValueError: No module of the dotted path can be imported, or it lacks the attribute;
            the message says how to write the target.
    """
    text = str(target).strip()
    if is_import_path(text):
        return import_object(text, what), text
    parts = text.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if _module_missing(err, module):
                continue
            raise
        path = f"{module}:{'.'.join(parts[i:])}"
        return import_object(path, what), path
    raise ValueError(
        f"{what}._target_={text!r}: no module of it can be imported; write "
        "package.module.Name with the package importable (installed, or its folder on "
        "PYTHONPATH)"
    )


def launch_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the folder the command was started in.

    The same as the working directory unless the Hydra job changed into its output folder
    (``hydra.job.chdir=true``).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        from hydra.utils import get_original_cwd

        return Path(get_original_cwd()) / p
    return Path.cwd() / p


__all__ = ["launch_path", "target_object"]
