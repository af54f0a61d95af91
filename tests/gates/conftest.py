"""Gate tests: plugin loading for pytester, digits checkpoints, and the repo's own MNIST gate.

The repository's gate file ``tests/gates/robustness_gates.yaml`` checks a small CNN trained on
real MNIST. Its ``model:`` is ``${ROBUSTNESS_GATES_MNIST_CKPT}``: just before the first gate of
that file runs, :func:`pytest_runtest_setup` below gets the model (FGSM-RS adversarial training,
Wong et al. 2020: the ``mnist_small_cnn_fgsm_at`` recipe of ``tests/trained.py``, trained once
and cached), saves it into a temporary folder and exports its path in that variable (restored
at the end of the session).
Set the variable yourself to gate another checkpoint of the same architecture instead. Without
the MNIST mirror ($ROBUSTBENCH_LOCAL_DATA_DIR or ../shared/datasets) the gates are skipped. The
file marks its gates ``slow`` (``marks: [slow]``), so ``pytest -m "not slow"`` deselects them and
trains nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[2]
GATE_FILE = Path(__file__).with_name("robustness_gates.yaml")
CKPT_ENV = "ROBUSTNESS_GATES_MNIST_CKPT"
DATA_ENV = "ROBUSTBENCH_LOCAL_DATA_DIR"


PLUGIN = "robustbench_local.gates.plugin"


def _plugin_args() -> list[str]:
    """How an inner pytester run loads the plugin: by entry point if installed, else with -p."""
    for ep in importlib.metadata.entry_points(group="pytest11"):
        if ep.name == "robustness" and ep.value == PLUGIN:
            return []
    return ["-p", PLUGIN]


@pytest.fixture(scope="session")
def plugin_args() -> list[str]:
    """Command-line arguments that make an inner pytester session load the plugin."""
    return _plugin_args()


# ------------------------------------------------------------------ results without a model


def _make_result(
    outcomes, *, thresholds=0.5, gate_id="tests/test_x.py::test_gate", confidence=0.95, **spec_kw
):
    """A :class:`GateResult` from ``[K][N]`` per-sample outcomes (eps 0.1, 0.2, ... by default)."""
    from robustbench_local import gates

    eps = spec_kw.pop("eps", [0.1 * (i + 1) for i in range(len(outcomes))])
    spec = gates.GateSpec.from_kwargs(
        gate_id.rsplit("::", 1)[-1],
        {
            "eps": eps,
            "min_accuracy": thresholds,
            "confidence": confidence,
            "dataset": "digits",
            **spec_kw,
        },
    )
    n = len(outcomes[0])
    return gates.GateResult(
        gate_id=gate_id,
        spec=spec,
        rows=gates.make_rows(spec, outcomes),
        outcomes=[list(o) for o in outcomes],
        clean_correct=[True] * n,
        indices=list(range(n)),
        sample_hash=gates.sample_list_hash("digits", "test", range(n)),
        model_digest="abc",
        attack_config={"attack": {"name": "pgd", "steps": 10}, "eps": list(spec.eps)},
    )


@pytest.fixture
def make_result():
    """Build gate results from per-sample outcomes (no model, no data)."""
    return _make_result


@pytest.fixture
def run_pytest(pytester: pytest.Pytester, plugin_args: list[str]):
    """Run an inner pytest session in ``pytester``'s folder with the plugin loaded."""

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest(*plugin_args, "-p", "no:cacheprovider", *args)

    return run


# ------------------------------------------------------------------------------ digits models


@pytest.fixture(scope="session")
def digits_checkpoints(tmp_path_factory, trained) -> dict[str, Path]:
    """``digits_mlp`` checkpoints: ``good`` (trained) and ``dropped`` (its weights perturbed,
    so that robust accuracy drops clearly)."""
    from robustbench_local.models import save_checkpoint

    good = trained("digits_zoo_mlp")
    dropped = trained("digits_zoo_mlp")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dropped.parameters():
            p.add_(0.5 * p.std() * torch.randn(p.shape, generator=gen))
    folder = tmp_path_factory.mktemp("digits_ckpt")
    paths = {"good": folder / "good.pt", "dropped": folder / "dropped.pt"}
    save_checkpoint(good, paths["good"])
    save_checkpoint(dropped.eval(), paths["dropped"])
    return paths


# ------------------------------------------------------------------------------ repo MNIST gate


def _mnist_mirror() -> Path | None:
    """The mirror the root conftest found and exported (None without one)."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env and (Path(env) / "mnist").is_dir() else None


def train_mnist_gate_model(config: pytest.Config) -> nn.Module:
    """``mnist_small_cnn`` after FGSM-RS adversarial training at eps 0.1 on 12,000 MNIST images.

    The ``mnist_small_cnn_fgsm_at`` recipe of ``tests/trained.py`` (the project's ``fgsm_at``
    defense), trained once and cached in pytest's cache folder.

    References:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training",
        ICLR 2020.
    """
    recipes = sys.modules["tests_trained"]  # loaded by tests/conftest.py
    return recipes.trained_model("mnist_small_cnn_fgsm_at", recipes.pytest_cache_dir(config))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the repo's first MNIST gate runs, train its model and export the checkpoint."""
    if item.path != GATE_FILE or os.environ.get(CKPT_ENV):
        return
    data_dir = _mnist_mirror()
    if data_dir is None:
        pytest.skip(f"MNIST mirror not found: set {DATA_ENV} to the shared datasets folder")
    from robustbench_local.models import save_checkpoint

    config = item.config
    saved = {name: os.environ.get(name) for name in (CKPT_ENV, DATA_ENV)}
    folder = tempfile.mkdtemp(prefix="robustness_gates_")
    config.add_cleanup(lambda: _restore_env(saved, folder))
    path = Path(folder) / "mnist_small_cnn_fgsm_at.pt"
    save_checkpoint(train_mnist_gate_model(config), path)
    os.environ[DATA_ENV] = str(data_dir)
    os.environ[CKPT_ENV] = str(path)


def _restore_env(saved: dict[str, str | None], folder: str) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(folder, ignore_errors=True)
