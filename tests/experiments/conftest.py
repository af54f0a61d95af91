from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import experiments  # noqa: F401  (resolvers)

CONF = Path(__file__).resolve().parents[2] / "experiments" / "conf"

# Shrinks any experiment to seconds: tiny training, few attack steps, few samples.
TINY = [
    "train.epochs=2",
    "eval.n_examples=60",
    "eval.batch_size=30",
    "progress=false",
    "tracking.log_model=false",
]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def tiny(cfg_overrides: list[str], attacks: list[str]) -> list[str]:
    """TINY plus per-attack step cuts for the attacks that are selected."""
    cuts = {
        "pgd": ["attack.pgd.steps=5", "attack.pgd.restarts=1"],
        "cw_l2": ["attack.cw_l2.steps=10", "attack.cw_l2.binary_search_steps=2"],
        "apgd_ce": ["attack.apgd_ce.steps=5"],
        "apgd_dlr": ["attack.apgd_dlr.steps=5", "attack.apgd_dlr.n_target_classes=2"],
        "pgd_l2": ["attack.pgd_l2.steps=5"],
    }
    return TINY + [c for a in attacks for c in cuts.get(a, [])] + cfg_overrides


@pytest.fixture
def make_cfg():
    def _make(overrides: list[str] = ()) -> DictConfig:
        with initialize_config_module(config_module="experiments.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _make


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture
def mnist_available(mnist_dir) -> None:
    """Skip unless the MNIST mirror (found by the root conftest) is available."""
