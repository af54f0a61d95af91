"""The pipeline uses each defense as its registered kind says, and returns the optimized metric."""

from __future__ import annotations

import copy

import pytest
import torch

from experiments import pipeline
from experiments.run import Results, optimized_value

FAST = ["dataset.train_subset=300", "train.epochs=1", "train.guard_n=50", "progress=false"]


def _weights_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    ("overrides", "trained", "wrapped", "folders"),
    [
        (["train=standard", "defense=none"], True, False, {"base"}),
        (["train=none", "defense=none"], False, False, set()),
        (["defense=fgsm_at"], True, False, {"defense"}),
        (["defense=standard"], True, False, {"defense"}),
        (["defense=median_filter"], True, True, {"base"}),
        (["train=none", "defense=median_filter"], False, True, set()),
        (["defense=denoising_autoencoder", "defense.epochs=1"], True, True, {"base", "defense"}),
    ],
)
def test_apply_defense_dispatches_on_the_registered_kind(
    make_cfg, tmp_path, overrides, trained, wrapped, folders
):
    cfg = make_cfg(FAST + overrides)
    pipeline.validate(cfg)
    data = pipeline.load_data(cfg)
    device = torch.device("cpu")
    model = pipeline.build_model(cfg, data, device)
    initial = copy.deepcopy(model)
    out = pipeline.apply_defense(cfg, model, data, device, tmp_path)
    if wrapped:
        assert out.classifier is model and out.preprocessor(data.test.tensors[0][:4]).shape[0] == 4
    else:
        assert out is model
    assert _weights_equal(model, initial) is not trained
    assert {p.name for p in tmp_path.iterdir()} == folders
    assert not out.training


def test_optimized_value_reads_the_run_metrics():
    res = Results(
        curves={},
        headline=0.4,
        clean_accuracy=0.9,
        model=torch.nn.Identity(),
        output_dir=None,  # type: ignore[arg-type]
        metrics={"headline_robust_acc": 0.4, "clean_acc": 0.9, "cost/linf/pgd/n_forward": 12.0},
    )
    assert optimized_value(res, "headline_robust_acc") == 0.4
    assert optimized_value(res, "cost/linf/pgd/n_forward") == 12.0
    assert optimized_value(res, None) is None
    with pytest.raises(ValueError, match=r"'cost/l2/cw_l2/wall_time'.*clean_acc"):
        optimized_value(res, "cost/l2/cw_l2/wall_time")
