"""The model logged the safe way: weights-only checkpoints and an MLflow model that rebuilds it.

A run's model is stored as plain data and tensors, never as a pickled object:

- ``model.pt``: the classifier, written by :func:`robustbench_local.save_checkpoint`
  (architecture name, its kwargs, the state dict and a SHA-256 digest). The architecture is a
  registered name or, for the user's own class, its import path ``mypkg.nets:Net`` with the
  keyword arguments it was built with. When the model is an inference-time defense (a
  :class:`~defenses.Preprocessed` wrapper) the checkpoint's ``meta`` records the defense: its
  registered name, its settings and its ``differentiable``/``random`` declarations; when the
  classifier is wrapped (:func:`robustbench_local.wrap_model`: logits read from a dict,
  normalisation, input scale) the checkpoint holds the model inside and ``meta["wrap"]`` the
  wrapper's settings;
- ``defense.pt``: only for a preprocessor with weights (the trained denoising autoencoder), its
  state dict, again written by ``save_checkpoint``.

:func:`load_model_files` reads both with ``torch.load(weights_only=True)`` (through
:func:`robustbench_local.load_checkpoint`, which also checks the digests) and rebuilds the
classifier from the model zoo or the user's package (imported by the path the checkpoint
records, so that package must be importable where the model is loaded) and the defense from
the defense registry: a file names code by registered name or import path, never holds any.

:func:`log_model` logs them as an MLflow ``pyfunc`` model whose code is a file
(:mod:`experiments.logged_model`, MLflow's "models from code"), so the logged model holds no
pickle or cloudpickle file either. MLflow 3 also has a non-pickle PyTorch format
(``mlflow.pytorch.log_model(serialization_format="pt2")``, a ``torch.export`` graph); it is not
used because a traced graph loses what an evaluation needs: the wrapper's preprocessor and
classifier as modules and its BPDA/EOT declarations, so a reloaded defended model could no longer
be attacked adaptively, and data-dependent defenses may not export at all.

Example:
    >>> files = save_model_files(guarded, folder)                # model.pt (+ defense.pt)
    >>> info = log_model(guarded, files, example=x[:2])          # inside an MLflow run
    >>> model = load_logged_model(info.model_uri)                # the nn.Module, defense included
    >>> mlflow.pyfunc.load_model(info.model_uri).predict(x.numpy())   # logits as numpy
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

CLASSIFIER_FILE = "model.pt"
DEFENSE_FILE = "defense.pt"
CODE_FILE = Path(__file__).with_name("logged_model.py")
DEFENSE_FORMAT = 1
_AUTOENCODER = "denoising_autoencoder"


class UnsupportedModelError(ValueError):
    """The model cannot be stored as weights plus registered names (e.g. a custom module)."""


def _wrapped(model: nn.Module) -> bool:
    from defenses.inference import Preprocessed

    return isinstance(model, Preprocessed)


def _autoencoder_settings(pre: nn.Module) -> dict[str, int]:
    first = pre.net[0]
    return {"channels": int(first.in_channels), "width": int(first.out_channels)}


def _preprocessor_name(pre: nn.Module) -> str:
    """The registry name of ``pre``'s class.

    Raises:
        UnsupportedModelError: The class is not registered.
    """
    from defenses.denoising import ConvAutoencoder
    from defenses.inference import preprocessor_names
    from defenses.registry import DEFENSES

    if type(pre) is ConvAutoencoder:
        return _AUTOENCODER
    for name in preprocessor_names():
        if type(pre) is DEFENSES.metadata(name)["preprocessor"]:
            return name
    raise UnsupportedModelError(
        f"the preprocessor {type(pre).__name__} is not a registered inference defense, so it "
        "cannot be rebuilt from a checkpoint; register it with "
        "@defenses.register_input_defense(name)"
    )


def _settings(pre: nn.Module, name: str) -> dict[str, Any]:
    """The constructor arguments of ``pre``, read back from its attributes of the same name.

    Raises:
        UnsupportedModelError: An argument that is not kept as an attribute of plain data.
    """
    if name == _AUTOENCODER:
        return _autoencoder_settings(pre)
    params = [
        p.name
        for p in inspect.signature(type(pre).__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    missing = [p for p in params if not hasattr(pre, p)]
    bad = [p for p in params if p not in missing and not _plain(getattr(pre, p))]
    if missing or bad:
        raise UnsupportedModelError(
            f"the {name} preprocessor does not keep its argument(s) {', '.join(missing + bad)} "
            "as attributes of plain data, so it cannot be rebuilt from a checkpoint; store each "
            "constructor argument as an attribute of the same name"
        )
    return {p: getattr(pre, p) for p in params}


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float | str):
        return True
    return isinstance(value, list | tuple) and all(_plain(v) for v in value)


def defense_spec(model: nn.Module) -> dict[str, Any] | None:
    """What rebuilds the inference defense of ``model`` (``None`` for a plain classifier).

    Returns:
        ``{"format", "name", "settings", "differentiable", "random", "weights"}``; ``weights``
        says whether the preprocessor has a state dict (stored in ``defense.pt``).

    Raises:
        UnsupportedModelError: A preprocessor that is not registered, a custom BPDA surrogate,
            or settings that cannot be read back.
    """
    if not _wrapped(model):
        return None
    pre = model.preprocessor
    name = _preprocessor_name(pre)
    make = getattr(pre, "surrogate", None)
    default_surrogate = make() if callable(make) else nn.Identity()
    if type(model.surrogate) is not type(default_surrogate):
        raise UnsupportedModelError(
            f"the wrapper has a custom BPDA surrogate {type(model.surrogate).__name__}, which "
            "a checkpoint cannot rebuild; use the preprocessor's own surrogate()"
        )
    return {
        "format": DEFENSE_FORMAT,
        "name": name,
        "settings": _settings(pre, name),
        "differentiable": bool(model.differentiable),
        "random": bool(model.random),
        "weights": bool(pre.state_dict()),
    }


def wrap_settings(model: nn.Module) -> dict[str, Any] | None:
    """The :func:`robustbench_local.wrap_model` settings of a wrapped classifier (else None).

    Raises:
        UnsupportedModelError: The logits are read by a function, which a file cannot hold.
    """
    from robustbench_local.models import Normalize, WrappedModel

    if not isinstance(model, WrappedModel):
        return None
    if model.logits is not None and not isinstance(model.logits, str | int):
        raise UnsupportedModelError(
            "the model's logits are read by a function (wrap_model(logits=<function>)), which a "
            "checkpoint cannot hold; use a dict key, attribute name or index"
        )
    norm = model.normalize
    stats = isinstance(norm, Normalize)
    return {
        "logits": model.logits,
        "mean": norm.mean.flatten().tolist() if stats else None,
        "std": norm.std.flatten().tolist() if stats else None,
        "input_scale": float(model.input_scale),
    }


def _parts(
    model: nn.Module, strict: bool = True
) -> tuple[dict[str, Any] | None, nn.Module, dict[str, Any] | None]:
    """``(defense spec, network to checkpoint, wrap settings)`` of a model.

    ``strict=False``: a wrapper that cannot be stored gives ``None`` settings (the network
    inside is still checkpointed, weights only).

    Raises:
        UnsupportedModelError: See :func:`defense_spec`; :func:`wrap_settings` when strict.
    """
    from robustbench_local.models import WrappedModel

    spec = defense_spec(model)
    classifier = model.classifier if spec else model
    try:
        wrap = wrap_settings(classifier)
    except UnsupportedModelError:
        if strict:
            raise
        wrap = None
    net = classifier.model if isinstance(classifier, WrappedModel) else classifier
    return spec, net, wrap


def save_model_files(model: nn.Module, folder: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``model.pt`` (and ``defense.pt`` for a preprocessor with weights) into ``folder``.

    The classifier's architecture is recorded as :func:`robustbench_local.save_checkpoint`
    does (a registered name, or the import path of the user's class); a network it cannot name
    (a ``torch.nn`` container, a class defined in a script) is stored under its class name,
    weights only (:func:`loadable` says why it cannot be rebuilt). A wrapper
    (:func:`robustbench_local.wrap_model`) is stored as the network inside and its settings in
    ``meta["wrap"]``; settings a file cannot hold (logits read by a function) leave the network
    inside, weights only.

    Returns:
        ``{"classifier": path}`` plus ``"defense": path`` when there is one (the names are the
        MLflow model's artifact names).

    Raises:
        UnsupportedModelError: See :func:`defense_spec`.
    """
    from robustbench_local import save_checkpoint

    folder = Path(folder)
    spec, net, wrap = _parts(model, strict=False)
    files = {"classifier": str(folder / CLASSIFIER_FILE)}
    meta = {"defense": spec, **({"wrap": wrap} if wrap is not None else {})}
    try:
        save_checkpoint(net, files["classifier"], meta=meta)
    except ValueError as err:
        logger.debug("%s: weights only (%s)", type(net).__name__, err)
        save_checkpoint(net, files["classifier"], arch=type(net).__name__, meta=meta)
    if spec and spec["weights"]:
        files["defense"] = str(folder / DEFENSE_FILE)
        save_checkpoint(model.preprocessor, files["defense"], arch=spec["name"],
                        meta={"defense": spec["name"]})  # fmt: skip
    return files


def build_preprocessor(name: str, settings: Mapping[str, Any]) -> nn.Module:
    """A registered preprocessor (or the denoising autoencoder's network) from its settings.

    Raises:
        ValueError: ``name`` is not a registered inference defense (the known ones are listed).
    """
    from defenses.denoising import ConvAutoencoder
    from defenses.inference import create_preprocessor, preprocessor_names

    if name == _AUTOENCODER:
        return ConvAutoencoder(**settings)
    if name not in preprocessor_names():
        known = ", ".join([*preprocessor_names(), _AUTOENCODER])
        raise ValueError(
            f"checkpoint names defense {name!r}, which is not registered; known: {known}"
        )
    return create_preprocessor(name, **settings)


def load_model_files(
    classifier: str | os.PathLike[str],
    defense: str | os.PathLike[str] | None = None,
    *,
    map_location: Any = "cpu",
) -> nn.Module:
    """Rebuild a model saved by :func:`save_model_files` (weights-only loading, digests checked).

    Args:
        classifier: ``model.pt``.
        defense: ``defense.pt``, needed when the defense has weights.
        map_location: Device to load onto.

    Returns:
        The classifier, or the :class:`~defenses.Preprocessed` defense around it, in eval mode.

    Raises:
        ValueError: A corrupt or tampered file, an unknown architecture or defense, or a
            missing ``defense.pt``.
    """
    from defenses.inference import Preprocessed
    from robustbench_local import load_checkpoint, wrap_model

    net = load_checkpoint(classifier, map_location=map_location)
    meta = getattr(net, "checkpoint_meta", None) or {}
    if meta.get("wrap"):
        net = wrap_model(net, **meta["wrap"])
    spec = meta.get("defense")
    if not spec:
        return net.eval()
    if spec.get("format") != DEFENSE_FORMAT:
        raise ValueError(
            f"{classifier}: defense format {spec.get('format')!r}; this version reads "
            f"{DEFENSE_FORMAT}"
        )
    pre = build_preprocessor(spec["name"], spec["settings"])
    if spec["weights"]:
        if defense is None:
            raise ValueError(
                f"{classifier} is protected by a {spec['name']} with weights: pass its "
                f"{DEFENSE_FILE} as defense="
            )
        pre = load_checkpoint(defense, model=pre, map_location=map_location)
    if isinstance(map_location, str | torch.device):
        pre = pre.to(map_location)
    wrapped = Preprocessed(
        pre.eval(), net, differentiable=spec["differentiable"], random=spec["random"]
    )
    return wrapped.eval()


class RobustnessModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc model: loads the checkpoints, predicts logits for float NCHW inputs.

    ``model_config={"device": "cuda"}`` at load time puts the model on that device; the
    rebuilt ``nn.Module`` is :attr:`model` (``loaded.unwrap_python_model().model``).
    """

    model: nn.Module | None = None

    def load_context(self, context: Any) -> None:
        """Rebuild the model from the ``classifier`` (and ``defense``) artifacts."""
        device = torch.device((context.model_config or {}).get("device", "cpu"))
        arts = context.artifacts
        self.model = load_model_files(arts["classifier"], arts.get("defense"), map_location=device)

    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Logits ``[N, classes]`` for ``model_input`` ``[N, C, H, W]`` in ``[0, 1]`` (batched).

        Raises:
            RuntimeError: The model was not loaded.
        """
        if self.model is None:
            raise RuntimeError("load the model with mlflow.pyfunc.load_model(uri) first")
        batch = int((params or {}).get("batch_size", 512))
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = [self.model(x[i : i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
        return torch.cat(out).numpy()


def _signature(model: nn.Module, example: torch.Tensor) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    with torch.no_grad():
        logits = model(example)
    example = example.cpu()
    shape_in = (-1, *example.shape[1:])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape_in)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(logits.shape[1])))]),
    )


def check_rebuild(model: nn.Module, files: Mapping[str, str], example: torch.Tensor) -> None:
    """Reload the files on ``model``'s device and compare the logits on ``example`` with its own.

    Skipped for random models (their logits differ from call to call).

    Raises:
        UnsupportedModelError: The rebuilt model computes something else.
    """
    if getattr(model, "random", False):
        return
    device = _device(model)
    try:
        rebuilt = load_model_files(files["classifier"], files.get("defense"), map_location=device)
    except (ValueError, TypeError) as err:
        reason = f"the model cannot be rebuilt from its checkpoint: {err}"
        raise UnsupportedModelError(reason) from err
    example = example.to(device)
    with torch.no_grad():
        want, got = model(example), rebuilt(example)
    if not torch.allclose(want, got, rtol=1e-4, atol=1e-5):
        raise UnsupportedModelError(
            f"the model rebuilt from its checkpoint differs from the trained one by "
            f"{float((want - got).abs().max()):.3g} in logits; its settings were not all stored"
        )


def loadable(model: nn.Module) -> str | None:
    """Why the MLflow model of ``model`` could not be loaded back, or ``None`` if it can.

    It can when the classifier is a registered architecture or the user's class (or
    function) that is imported back by path, and a wrapper's settings are plain data.
    """
    try:
        _, net, _ = _parts(model)
    except UnsupportedModelError as err:
        return str(err)
    arch = getattr(net, "arch", None) or _class_path(net)
    if arch is None:
        return (
            f"the classifier {type(net).__name__} is not a registered architecture nor a class "
            "of your package that can be imported back by path (mypkg.nets:Net), so only its "
            "weights are logged (checkpoint/model.pt: load them with "
            "robustbench_local.load_checkpoint(path, arch='mypkg.nets:Net'))"
        )
    return None


def _class_path(net: nn.Module) -> str | None:
    """The import path of the network's class (None for torch containers and script classes)."""
    from robustbench_local.imports import import_path_of

    cls = type(net)
    if cls.__module__.split(".")[0] == "torch":
        return None
    try:
        return import_path_of(cls)
    except ValueError:
        return None


def log_model(
    model: nn.Module,
    files: Mapping[str, str],
    example: torch.Tensor | None = None,
    *,
    name: str = "model",
) -> Any:
    """Log ``files`` (from :func:`save_model_files`) as the pyfunc model ``name`` of the active run.

    Args:
        model: The model the files hold (for the signature and the rebuild check).
        files: The checkpoint artifacts.
        example: A few inputs: the signature, the input example and the rebuild check.
        name: The logged model's name.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` loads it).

    Raises:
        UnsupportedModelError: The model cannot be rebuilt (see :func:`loadable`,
            :func:`check_rebuild`).
    """
    reason = loadable(model)
    if reason:
        raise UnsupportedModelError(reason)
    kwargs: dict[str, Any] = {}
    if example is not None:
        example = example[:2].detach().float()
        check_rebuild(model, files, example.to(_device(model)))
        kwargs["signature"] = _signature(model, example.to(_device(model)))
        kwargs["input_example"] = example.cpu().numpy()
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(CODE_FILE),
        artifacts=dict(files),
        pip_requirements=[f"torch=={torch.__version__}", f"mlflow=={mlflow.__version__}"],
        **kwargs,
    )


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def load_logged_model(
    model_uri: str, device: str = "cpu", tracking_uri: str | None = None
) -> nn.Module:
    """The ``nn.Module`` of a model logged by :func:`log_model`.

    Args:
        model_uri: ``runs:/<run id>/model``, ``models:/<model id>`` or a local folder.
        device: Where to put the model.
        tracking_uri: The tracking server to read from (default: MLflow's current one).
    """
    with _tracking(tracking_uri):
        loaded = mlflow.pyfunc.load_model(model_uri, model_config={"device": device})
    return loaded.unwrap_python_model().model


@contextlib.contextmanager
def _tracking(uri: str | None) -> Iterator[None]:
    """MLflow's tracking URI set to ``uri`` for the block (unchanged when ``uri`` is None).

    ``runs:/`` and ``models:/`` URIs are resolved through MLflow's current tracking URI only.
    """
    if uri is None:
        yield
        return
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        # None puts MLflow back on its default (MLFLOW_TRACKING_URI or ./mlflow.db)
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]


__all__ = [
    "CLASSIFIER_FILE",
    "DEFENSE_FILE",
    "RobustnessModel",
    "UnsupportedModelError",
    "build_preprocessor",
    "check_rebuild",
    "defense_spec",
    "load_logged_model",
    "load_model_files",
    "loadable",
    "log_model",
    "save_model_files",
    "wrap_settings",
]
