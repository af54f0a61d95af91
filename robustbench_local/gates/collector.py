"""YAML gate files: each gate of a ``*robustness_gates*.yaml`` file is one pytest item.

A file is ``{defaults: {...}, gates: [{name, model, ...}, ...]}``: ``defaults`` apply to every
gate; each gate has a ``name``, a ``model`` (a checkpoint path, or a mapping with ``_target_``
for ``hydra.utils.instantiate`` and/or ``checkpoint``), optional ``marks`` (pytest marker names
such as ``[slow]``, so that ``-m "not slow"`` deselects the gate) and the settings of
``@pytest.mark.robustness(...)``. A malformed file is a collection error that names the gate
and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from robustbench_local.gates.errors import GateConfigError
from robustbench_local.gates.session import MARKER, fail_setup, gate_session
from robustbench_local.gates.spec import GateSpec

if TYPE_CHECKING:
    from torch import nn

    from defenses.data import DataLike

_FILE_KEYS = ("defaults", "gates")
_MODEL_KEYS = ("checkpoint", "_target_")
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
        if isinstance(value, str):
            value = {"checkpoint": value}
        if not isinstance(value, dict) or not any(k in value for k in _MODEL_KEYS):
            raise self.CollectError(
                f"{where}: 'model' must be a checkpoint path or a mapping with 'checkpoint' "
                "and/or '_target_' (a class or function for hydra.utils.instantiate)"
            )
        return dict(value)

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
        self._data: DataLike | None = None

    def setup(self) -> None:
        """Check the checkpoint exists, the attack builds and the data has enough samples."""
        try:
            self.checkpoint_path()
            self._data = gate_session(self.config).prepare(self.spec)
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
        text = os.path.expanduser(os.path.expandvars(str(raw)))
        missing = re.findall(r"\$\{?(\w+)\}?", text)
        if missing:
            raise ValueError(
                f"model checkpoint {raw!r} uses unset environment variable(s) {missing}"
            )
        path = Path(text)
        path = path if path.is_absolute() else self.path.parent / path
        if not path.is_file():
            raise FileNotFoundError(
                f"model checkpoint not found: {path} (from {raw!r} in {self.path.name}); "
                "create it first or fix the path"
            )
        return path

    def load_model(self) -> nn.Module:
        """Build the model (``_target_`` via hydra.utils.instantiate) and load ``checkpoint``."""
        from robustbench_local.models import load_checkpoint

        path = self.checkpoint_path()
        model = None
        if "_target_" in self.model_cfg:
            from hydra.utils import instantiate

            cfg = {k: v for k, v in self.model_cfg.items() if k != "checkpoint"}
            model = instantiate(cfg)
        if path is not None:
            model = load_checkpoint(path, model=model)
        return model

    def runtest(self) -> None:
        """Evaluate the gate; a failing verdict fails the item with the table."""
        state = gate_session(self.config)
        state.evaluate(state.gate_id(self.nodeid), self.spec, self.load_model(), self._data)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the gate is defined."""
        return self.path, None, f"robustness gate {self.name}"


__all__ = ["GateFile", "GateItem"]
