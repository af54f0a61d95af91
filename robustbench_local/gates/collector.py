"""YAML gate files: each gate of a ``*robustness_gates*.yaml`` file is one pytest item.

A file is ``{defaults: {...}, gates: [{name, model, ...}, ...]}``: ``defaults`` apply to every
gate; each gate has a ``name``, a ``model``, optional ``marks`` (pytest marker names such as
``[slow]``, so that ``-m "not slow"`` deselects the gate) and the settings of
``@pytest.mark.robustness(...)``. A malformed file is a collection error that names the gate
and the fix.

``model`` is a checkpoint path, or a mapping: ``{checkpoint, arch, arch_kwargs, wrap}`` (a
checkpoint or plain state dict, the architecture as a registered name or an import path
``mypkg.nets:Net`` with its keyword arguments, and ``wrap_model`` settings ``logits``, ``mean``,
``std``, ``input_scale``: :mod:`robustbench_local.models.spec`), or ``{_target_, ...}`` built
by ``hydra.utils.instantiate`` (optionally with ``checkpoint`` and ``wrap``). Paths (the
checkpoint, a ``dataset`` folder or file) are relative to the YAML file; ``$VARS`` expand.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.session import MARKER, fail_gate, fail_setup, gate_session
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from robustbench_local.gates.runner import GateData

_FILE_KEYS = ("defaults", "gates")
_BUILT_KEYS = ("checkpoint", "wrap")
"""Keys of a ``_target_`` model mapping that are not passed to ``instantiate``."""
_NAME = re.compile(r"[\w.\-]+")


class GateFile(pytest.File):
    """A YAML file of gates: ``{defaults: {...}, gates: [{name, model, ...}, ...]}``."""

    def collect(self) -> Iterator[GateItem]:
        """One :class:`GateItem` per gate; malformed files are collection errors."""
        defaults, gates = self._read()
        state = gate_session(self.config)
        seen: set[str] = set()
        for i, raw in enumerate(gates):
            where = f"{self.path.name}: gates[{i}]"
            entry = {**defaults, **self._mapping(raw, where)}
            name = entry.pop("name", None)
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise self.CollectError(
                    f"{where}: every gate needs a name of letters, digits, _ . -"
                )
            if name in seen:
                raise self.CollectError(f"{where}: duplicate gate name {name!r}")
            seen.add(name)
            where = f"{self.path.name}: gate {name!r}"
            model = self._model(entry.pop("model", None), where)
            marks = self._marks(entry.pop("marks", None), where)
            try:
                spec = state.spec(name, entry)
            except GateConfigError as err:
                raise self.CollectError(f"{where}: {err}") from None
            yield GateItem.from_parent(self, name=name, spec=spec, model_cfg=model, marks=marks)

    def _read(self) -> tuple[dict[str, Any], list[Any]]:
        import yaml

        try:
            doc = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as err:
            raise self.CollectError(f"{self.path.name}: cannot read YAML: {err}") from None
        doc = self._mapping(doc, self.path.name)
        unknown = sorted(set(doc) - set(_FILE_KEYS))
        if unknown:
            raise self.CollectError(
                f"{self.path.name}: unknown top-level keys {unknown}; expected {_FILE_KEYS}"
            )
        gates = doc.get("gates")
        if not isinstance(gates, list) or not gates:
            raise self.CollectError(f"{self.path.name}: 'gates' must be a non-empty list of gates")
        return self._mapping(doc.get("defaults") or {}, f"{self.path.name}: defaults"), gates

    def _mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.CollectError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)

    def _model(self, value: Any, where: str) -> dict[str, Any]:
        """The gate's model settings, checked (a path becomes ``{checkpoint: path}``)."""
        if isinstance(value, str):
            value = {"checkpoint": value}
        if not isinstance(value, dict) or not ("checkpoint" in value or "_target_" in value):
            raise self.CollectError(
                f"{where}: 'model' must be a checkpoint path or a mapping with 'checkpoint' "
                "(and optionally arch, arch_kwargs, wrap) or '_target_' (a class or function "
                "for hydra.utils.instantiate)"
            )
        try:
            return _checked_model(value)
        except ValueError as err:
            raise self.CollectError(f"{where}: model: {err}") from None

    def _marks(self, value: Any, where: str) -> list[pytest.MarkDecorator]:
        """The gate's ``marks`` (a marker name or a list of names) as mark decorators."""
        if value is None:
            return []
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not all(
            isinstance(n, str) and n.isidentifier() for n in names
        ):
            raise self.CollectError(
                f"{where}: 'marks' must be a pytest marker name or a list of names, "
                f"e.g. marks: [slow]; got {value!r}"
            )
        marks = []
        for n in names:
            try:
                marks.append(getattr(pytest.mark, n))
            except pytest.fail.Exception as err:  # --strict-markers and not registered
                raise self.CollectError(
                    f"{where}: marker {n!r} is not registered ({err.msg}): add it to the "
                    "'markers' ini option or fix the name"
                ) from None
        return marks


class GateItem(pytest.Item):
    """One gate of a YAML file: loads its model and checks it like the fixture does."""

    def __init__(
        self,
        *,
        spec: GateSpec,
        model_cfg: dict[str, Any],
        marks: Sequence[pytest.MarkDecorator] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.model_cfg = model_cfg
        self.add_marker(MARKER)
        for mark in marks:
            self.add_marker(mark)
        self._data: GateData | None = None

    def setup(self) -> None:
        """Check the checkpoint exists, the attack builds and the data has enough samples.

        ``$VARS`` in the ``dataset`` expand here, as in the checkpoint: a conftest may set them.
        """
        try:
            self.checkpoint_path()
            if "$" in self.spec.dataset:
                dataset = _expanded(self.spec.dataset, "dataset")
                self.spec = dataclasses.replace(self.spec, dataset=dataset)
            self._data = gate_session(self.config).prepare(self.spec, self.path.parent)
        except (GateConfigError, OSError, ValueError, TypeError) as err:
            fail_setup(self.nodeid, err)

    def checkpoint_path(self) -> Path | None:
        """The model's checkpoint, environment variables expanded, relative to the YAML file.

        Raises:
            FileNotFoundError: The checkpoint does not exist.
            ValueError: The path uses an environment variable that is not set.
        """
        raw = self.model_cfg.get("checkpoint")
        if raw is None:
            return None
        path = Path(_expanded(str(raw), "model checkpoint"))
        path = path if path.is_absolute() else self.path.parent / path
        if not path.is_file():
            raise FileNotFoundError(
                f"model checkpoint not found: {path} (from {raw!r} in {self.path.name}); "
                "create it first or fix the path"
            )
        return path

    def load_model(self) -> nn.Module:
        """Build the model, then apply ``wrap``.

        With ``_target_`` through hydra.utils.instantiate (weights from ``checkpoint``), else
        from the checkpoint and its architecture (``arch``, ``arch_kwargs``).
        """
        from robustbench_local.models import load_checkpoint, wrap_model
        from robustbench_local.models.spec import model_from_checkpoint

        cfg, path = self.model_cfg, self.checkpoint_path()
        if "_target_" not in cfg:
            return model_from_checkpoint(
                path, arch=cfg.get("arch"), arch_kwargs=cfg.get("arch_kwargs"), wrap=cfg["wrap"]
            )
        from hydra.utils import instantiate

        model = instantiate({k: v for k, v in cfg.items() if k not in _BUILT_KEYS})
        if path is not None:
            model = load_checkpoint(path, model=model)
        return wrap_model(model, **cfg["wrap"]) if cfg["wrap"] else model

    def runtest(self) -> None:
        """Evaluate the gate; a failing verdict fails the item with the table."""
        state = gate_session(self.config)
        gate_id = state.gate_id(self.nodeid)
        try:
            model = self.load_model()
        except (OSError, ValueError, TypeError) as err:
            fail_gate(f"robustness gate {self.name!r}: cannot load the model: {err}")
        state.evaluate(gate_id, self.spec, model, self._data)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the gate is defined."""
        return self.path, None, f"robustness gate {self.name}"


def _expanded(raw: str, what: str) -> str:
    """``raw`` with ``~`` and ``$VARS`` expanded.

    Raises:
        ValueError: It uses an environment variable that is not set.
    """
    text = os.path.expanduser(os.path.expandvars(raw))
    missing = re.findall(r"\$\{?(\w+)\}?", text)
    if missing:
        raise ValueError(f"{what} {raw!r} uses unset environment variable(s) {missing}")
    return text


def _checked_model(value: dict[str, Any]) -> dict[str, Any]:
    """A model mapping with its keys and ``wrap`` checked.

    A ``_target_`` mapping keeps its other keys for ``instantiate``.

    Raises:
        ValueError: Unknown keys (listed with the known ones), bad ``wrap`` settings, or
            ``arch``/``arch_kwargs`` beside ``_target_``.
    """
    from robustbench_local.models.spec import check_model_mapping, check_wrap

    if "_target_" not in value:
        return check_model_mapping(value)
    clash = sorted(k for k in ("arch", "arch_kwargs") if k in value)
    if clash:
        raise ValueError(
            f"{', '.join(clash)} name the architecture to rebuild from a checkpoint, but "
            "_target_ builds the model itself: use one of the two"
        )
    return {**value, "wrap": check_wrap(value.get("wrap"))}


__all__ = ["GateFile", "GateItem"]
