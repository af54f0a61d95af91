"""Every ```python block of README.md runs as written, in order, in one session.

A reader pastes the blocks one after the other into one Python session: the test does the same
(one namespace, the blocks in README order) in a fresh working folder, with nothing defined
beforehand. The only set-up is the environment a reader has too: the offline dataset mirror
(``$ROBUSTBENCH_LOCAL_DATA_DIR``, exported by the root conftest) and a cache folder
(``$ROBUSTBENCH_LOCAL_CACHE``) kept in pytest's cache, so ``rbl.example_model(...)`` trains each
example model once per machine. A traceback points at the README's own lines.

The gate example (a test for the user's own test suite) is also written to a file and run by
pytest in a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from robustbench_local import gates
from robustbench_local.models.spec import check_model_mapping

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
YAML_FENCE = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
CACHE_FOLDER = "readme_cache"  # under pytest's cache folder: the example models live there
GATE_MARK = "@pytest.mark.robustness("


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of ``text`` in order, each as (first line number, source)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def compiled(line: int, source: str) -> Any:
    """``source`` compiled so that tracebacks show README.md's lines (it starts at ``line``)."""
    return compile("\n" * (line - 1) + source, str(README), "exec")


@pytest.fixture
def reader_session(pytestconfig, tmp_path, monkeypatch, mnist_dir) -> Path:
    """A reader's fresh folder; the example models cached for the machine (pytest's cache)."""
    cache = pytestconfig.cache
    folder = cache.mkdir(CACHE_FOLDER) if cache is not None else tmp_path / CACHE_FOLDER
    monkeypatch.setenv("ROBUSTBENCH_LOCAL_CACHE", str(folder))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the README's default store
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_python_blocks_that_compile():
    assert len(BLOCKS) >= 10
    for line, source in BLOCKS:
        compiled(line, source)  # a SyntaxError names the README line


def test_the_readme_yaml_gates_are_valid_gate_specs():
    text = README.read_text(encoding="utf-8")
    files = [yaml.safe_load(m.group(1)) for m in re.finditer(YAML_FENCE, text)]
    checked = 0
    for doc in files:
        for gate in doc["gates"]:
            settings = {**doc.get("defaults", {}), **gate}
            name, model = settings.pop("name"), settings.pop("model")
            if isinstance(model, dict):
                check_model_mapping(model)
            gates.GateSpec.from_kwargs(name, settings)  # a GateConfigError names the problem
            checked += 1
    assert checked >= 2


@pytest.mark.slow
def test_every_python_block_runs_in_order_in_one_session(reader_session, capsys):
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    timings = []
    for line, source in BLOCKS:
        start = time.perf_counter()
        try:
            exec(compiled(line, source), namespace)  # the README's own code
        except Exception as err:
            first = source.splitlines()[0]
            raise AssertionError(f"README.md block at line {line} ({first!r}) failed") from err
        timings.append((time.perf_counter() - start, line))
    with capsys.disabled():
        slowest = ", ".join(f"line {n}: {t:.1f} s" for t, n in sorted(timings, reverse=True)[:5])
        print(f"\nREADME blocks: {sum(t for t, _ in timings):.1f} s in all; slowest {slowest}")
    facts_hold(namespace, reader_session)


def facts_hold(ns: dict[str, Any], folder: Path) -> None:
    """What the README's examples say they produce, checked on what they produced."""
    curve = ns["curve"]
    assert curve.clean_accuracy > 0.9, curve.summary()  # a trained example model
    assert "health:" in curve.summary() and (folder / "curve.png").is_file()
    assert ns["card"].clean_acc > 90
    assert ns["attacks"].find_rounding_ops(ns["rounded"], ns["x"]) == ["round"]
    cert = ns["cert"]
    assert cert.accuracy.tolist() == sorted(cert.accuracy.tolist(), reverse=True)
    assert 0 < float(cert.accuracy[0]) <= cert.clean_accuracy
    checked = ns["checked"]  # the certified row beside the attacks: never above the worst case
    assert checked.certified is not None
    assert bool((checked.certified.accuracy <= checked.worst_case() + 1e-9).all())
    corruption = ns["cc"]
    assert 0 < corruption.mean_accuracy <= 1 and not math.isnan(ns["mce"])
    assert ns["run_id"] and ns["reloaded"] is not None


@pytest.mark.slow
@pytest.mark.distributed
def test_the_gate_example_runs_as_a_users_test_file(reader_session):
    (gate,) = [source for _, source in BLOCKS if GATE_MARK in source]
    (reader_session / "test_gate_example.py").write_text(gate)
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_gate_example.py",
        "--robustness-report=gates.json", "--robustness-n-examples=100",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (result,) = json.loads((reader_session / "gates.json").read_text())["gates"]
    assert result["verdict"] == "pass"
