"""What varies in a sweep, and the names and tags a job's run gets from it."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments import sweep, tracking


@pytest.mark.parametrize(
    ("overrides", "params", "keys"),
    [
        (["defense=none,fgsm_at", "seed=0,1,2", "train.epochs=2"], None, ["defense", "seed"]),
        (
            ["seed=range(3)", "attack=[fgsm,pgd]", "+model.width=32,64"],
            None,
            ["seed", "model.width"],
        ),
        (["eval=fast", "seed=0"], None, []),
        (["seed=choice(1,2)"], {"defense": "none,pgd_at", "seed": "1,2"}, ["seed", "defense"]),
        (["'eval.eps.linf=[0.1,0.2]'", "defense=glob(*_at)"], None, ["defense"]),
    ],
)
def test_sweep_keys_are_the_sweep_overrides(overrides, params, keys):
    overrides = [o.strip("'") for o in overrides]
    assert sweep.sweep_keys(overrides, params) == keys


def test_keys_file_round_trip(tmp_path):
    assert sweep.read_keys(tmp_path) is None
    sweep.write_keys(tmp_path, ["defense", "seed"])
    assert sweep.read_keys(tmp_path) == ["defense", "seed"]
    (tmp_path / sweep.KEYS_FILE).write_text('{"defense": 1}')
    with pytest.raises(ValueError, match="JSON list"):
        sweep.read_keys(tmp_path)


def test_a_job_keeps_its_values_of_the_varying_keys_in_sweep_order():
    job = ["train.epochs=2", "seed=3", "defense=fgsm_at", "+model.width=64", "~eval.eps.l2"]
    assert sweep.select_overrides(job, ["defense", "seed"]) == {"defense": "fgsm_at", "seed": "3"}
    assert sweep.select_overrides(job, None) == {
        "train.epochs": "2",
        "seed": "3",
        "defense": "fgsm_at",
        "model.width": "64",
    }
    with pytest.raises(ValueError, match="key=value"):
        sweep.override_key("~eval.eps.l2")


def test_run_names():
    values = {"defense": "fgsm_at", "seed": "3"}
    assert sweep.run_name("digits-digits_mlp-fgsm_at", values) == "defense=fgsm_at,seed=3"
    assert sweep.run_name("digits-digits_mlp-fgsm_at", {}) == "digits-digits_mlp-fgsm_at"
    assert sweep.run_name("base", {}, "mine") == "mine"
    assert sweep.run_name("base", values, "mine") == "mine defense=fgsm_at,seed=3"
    assert len(sweep.run_name("b", {"k": "x" * 1000})) == 250


def test_outside_a_sweep_there_are_no_override_tags_and_the_short_name(make_cfg):
    cfg = make_cfg(["defense=median_filter"])
    tags = tracking.run_tags(cfg, ["fgsm"])
    assert not [k for k in tags if k.startswith(("override", "overrides"))]
    assert tracking.run_name(cfg, tags) == "digits-digits_mlp-median_filter"
    named = OmegaConf.merge(cfg, {"tracking": {"run_name": "baseline"}})
    assert tracking.run_name(named, tags) == "baseline"


def test_tags_of_a_sweep_job_carry_its_overrides(make_cfg):
    tags = {"dataset": "digits", "model": "digits_mlp", "defense": "fgsm_at"}
    tags.update(sweep.override_tags({"defense": "fgsm_at", "seed": "3"}))
    assert tags["overrides"] == "defense=fgsm_at,seed=3"
    assert tags["override.defense"] == "fgsm_at" and tags["override.seed"] == "3"
    assert tracking.run_name(make_cfg(), tags) == "defense=fgsm_at,seed=3"


def test_runs_come_in_launch_order():
    from types import SimpleNamespace

    from experiments.compare import launch_order

    def run(run_id, start, parent=None, job=None):
        tags = {"mlflow.parentRunId": parent} if parent else {}
        if job is not None:
            tags["sweep_job"] = str(job)
        return SimpleNamespace(
            info=SimpleNamespace(run_id=run_id, start_time=start), data=SimpleNamespace(tags=tags)
        )

    runs = [
        run("b1", 30, "B", 1),
        run("single", 5),
        run("a1", 12, "A", 1),
        run("a0", 14, "A", 0),  # job 0 of sweep A started after job 1 (parallel launcher)
        run("b0", 31, "B", 0),
    ]
    assert [r.info.run_id for r in launch_order(runs)] == ["single", "a0", "a1", "b0", "b1"]
