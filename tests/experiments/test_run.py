"""End-to-end runs through the pure run(cfg), tracked in a real SQLite MLflow store."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

import robustbench_local as rbl
from experiments.compare import run_curves
from experiments.run import optimized_value, run

from .conftest import options, tiny


def headline_from_curve(res, cfg) -> float:
    """Fraction correct and robust to every headline attack at the headline eps, from the curve."""
    curve = res.curves[cfg.eval.headline.norm]
    eps = curve.eps.tolist()
    (k,) = [i for i, e in enumerate(eps) if e == pytest.approx(cfg.eval.headline.eps)]
    robust = curve.clean_correct.clone()
    for label in curve.headline_labels:
        robust &= curve.robust[label][k]
    worst = float(robust.float().mean())
    assert worst <= min(float(curve.accuracy(label)[k]) for label in curve.attacks)
    assert worst <= res.clean_accuracy
    return worst


@pytest.mark.slow
def test_default_experiment_logs_curves_to_mlflow(make_cfg, sqlite_uri, tmp_path):
    cfg = make_cfg(tiny(["defense.epochs=2", f"+output_dir={tmp_path / 'out'}"], ["pgd", "cw_l2"]))
    res = run(cfg)
    assert set(res.curves) == {"linf", "l2"}
    linf = res.curves["linf"]
    # the chosen attacks' rows, then the reference suite's (on by default)
    assert linf.attacks == ["fgsm", "pgd", "reference"]
    assert res.curves["l2"].attacks == ["cw_l2", "reference"]
    assert res.headline == pytest.approx(headline_from_curve(res, cfg))
    assert optimized_value(res, cfg.optimized_metric) == res.headline
    assert optimized_value(res, "clean_acc") == pytest.approx(res.clean_accuracy)
    assert (res.output_dir / "curve_linf.png").is_file()

    client = MlflowClient(sqlite_uri)
    mrun = client.get_run(res.run_id)
    assert mrun.info.status == "FINISHED"
    assert mrun.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    tags = mrun.data.tags
    assert tags["dataset"] == "digits" and tags["defense"] == "fgsm_at"
    assert tags["attacks"] == "fgsm,pgd,cw_l2" and "version.torch" in tags
    assert mrun.data.params["defense.eps"] == "0.2"
    curves = run_curves(client, mrun)
    assert curves.eps["linf"] == pytest.approx(linf.eps.tolist())
    assert curves.accuracy["linf"]["pgd"] == pytest.approx(linf.accuracy("pgd").tolist())
    assert curves.accuracy["linf"]["worst_case"] == pytest.approx(linf.worst_case().tolist())
    assert mrun.data.metrics["headline_robust_acc"] == pytest.approx(res.headline)
    for key, value in res.metrics.items():
        assert mrun.data.metrics[key] == pytest.approx(value)
    history = client.get_metric_history(res.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2] or [m.step for m in history] == [0, 1]
    files = {f.path for f in client.list_artifacts(res.run_id)}
    assert {"config.yaml", "manifest.json", "health.json", "curves", "checkpoint"} <= files
    curve_files = {f.path for f in client.list_artifacts(res.run_id, "curves")}
    assert {"curves/linf.png", "curves/linf.json", "curves/linf_per_example.csv"} <= curve_files


@pytest.mark.slow
def test_input_defense_reports_naive_and_adaptive_curves(make_cfg, sqlite_uri, tmp_path):
    cfg = make_cfg(tiny(["defense=bit_depth", "attack=pgd", f"+output_dir={tmp_path}"], ["pgd"]))
    res = run(cfg)
    labels = res.curves["linf"].attacks
    assert labels == ["pgd", "pgd+adaptive", "reference"]
    adaptive = res.curves["linf"].accuracy("pgd+adaptive")
    assert (adaptive <= res.curves["linf"].accuracy("pgd") + 1e-9).all()
    client = MlflowClient(sqlite_uri)
    logged = run_curves(client, client.get_run(res.run_id))
    assert logged.accuracy["linf"]["pgd_adaptive"] == pytest.approx(adaptive.tolist())


def test_a_run_that_raises_ends_failed_with_the_error(make_cfg, sqlite_uri, tmp_path):
    cfg = make_cfg(tiny(["defense.epochs=0", f"+output_dir={tmp_path}"], ["pgd", "cw_l2"]))
    with pytest.raises(ValueError, match="epochs"):
        run(cfg)
    client = MlflowClient(sqlite_uri)
    (mrun,) = client.search_runs([client.get_experiment_by_name("robustness").experiment_id])
    assert mrun.info.status == "FAILED"
    assert "epochs" in mrun.data.tags["error"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", options("experiment"))
def test_every_experiment_preset_runs_end_to_end(make_cfg, preset, mnist_available, tmp_path):
    over = [
        f"experiment={preset}",
        "dataset.train_subset=300",
        "tracking=none",
        f"+output_dir={tmp_path}",
    ]
    if preset != "mnist_denoise":
        over.append("defense.epochs=1")
    if preset == "mnist_fast_at":
        over.append("defense.guard_n=64")
    if preset == "mnist_early_stopping":
        over += ["dataset.val_size=100", "defense.early_stopping.n=50"]
    cfg = make_cfg(tiny(over, ["pgd"]))
    res = run(cfg)
    assert cfg.eval.headline.eps == cfg.train.eps
    assert res.headline == pytest.approx(headline_from_curve(res, cfg))
    assert res.curves["linf"].n_examples == 60


@pytest.mark.slow
def test_a_defended_run_logs_a_model_that_loads_back_with_its_defense(
    make_cfg, sqlite_uri, tmp_path
):
    """The trained denoiser is part of the logged model: same logits through MLflow."""
    from defenses.denoising import ConvAutoencoder
    from experiments.model_logging import load_logged_model

    over = ["defense=denoising_autoencoder", "defense.epochs=1", "attack=fgsm"]
    cfg = make_cfg(tiny([*over, "tracking.log_model=true", f"+output_dir={tmp_path}"], []))
    res = run(cfg)
    client = MlflowClient(sqlite_uri)
    mrun = client.get_run(res.run_id)
    assert mrun.data.tags["logged_model"].startswith("model (pyfunc")
    module = load_logged_model(f"runs:/{res.run_id}/model", tracking_uri=sqlite_uri)
    assert isinstance(module.preprocessor, ConvAutoencoder)
    x = rbl.load_dataset("digits")[1].tensors[0][res.curves["linf"].indices[:64]]
    with torch.no_grad():
        torch.testing.assert_close(module(x), res.model(x), rtol=0, atol=1e-6)
        bare = res.model.classifier(x)
    assert (bare - res.model(x)).abs().max() > 0  # the denoiser changes the logits
