"""Gate statistics, specs, baselines and reports (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import binom, binomtest

from robustbench_local import gates
from robustbench_local.gates import (
    BaselineError,
    GateConfigError,
    GateResult,
    GateSpec,
    accuracy_bounds,
    clopper_pearson_bounds,
    holm_adjust,
    mcnemar_drop_pvalue,
    threshold_verdict,
    wilson_bounds,
)

# ---------------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("n", [20, 100, 500])
def test_clopper_pearson_closed_forms_at_the_extremes(n):
    alpha = 0.05
    lo0, hi0 = clopper_pearson_bounds(0, n, 0.95)
    assert lo0 == 0.0
    assert hi0 == pytest.approx(1 - alpha ** (1 / n))
    lo_n, hi_n = clopper_pearson_bounds(n, n, 0.95)
    assert hi_n == 1.0
    assert lo_n == pytest.approx(alpha ** (1 / n))


def _miss_probability(bound_fn, p: float, n: int, side: str) -> float:
    """Exact P(bound excludes the true p) under Binomial(n, p)."""
    total = 0.0
    for k in range(n + 1):
        lo, hi = bound_fn(k, n, 0.95)
        if (side == "lower" and lo > p) or (side == "upper" and hi < p):
            total += binom.pmf(k, n, p)
    return total


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
@pytest.mark.parametrize("side", ["lower", "upper"])
def test_one_sided_bounds_have_their_coverage(p, side):
    n = 150
    # Clopper-Pearson is exact-conservative; Wilson is close to nominal.
    assert _miss_probability(clopper_pearson_bounds, p, n, side) <= 0.05 + 1e-12
    assert _miss_probability(wilson_bounds, p, n, side) <= 0.075


def test_wilson_matches_the_score_interval_and_is_monotone():
    lo, hi = wilson_bounds(80, 100, 0.95)
    z = 1.6448536269514722
    # The Wilson bounds solve |p_hat - p| = z sqrt(p (1 - p) / n).
    for b in (lo, hi):
        assert abs(0.8 - b) == pytest.approx(z * math.sqrt(b * (1 - b) / 100), rel=1e-9)
    lows = [wilson_bounds(k, 50, 0.95)[0] for k in range(51)]
    assert lows == sorted(lows)
    assert wilson_bounds(0, 50)[0] == 0.0
    assert wilson_bounds(50, 50)[1] == 1.0


def test_higher_confidence_widens_the_interval():
    lo90, hi90 = accuracy_bounds(70, 100, 0.90, "clopper-pearson")
    lo99, hi99 = accuracy_bounds(70, 100, 0.99, "clopper-pearson")
    assert lo99 < lo90 < 0.7 < hi90 < hi99


@pytest.mark.parametrize(
    ("k", "n", "confidence", "error"),
    [
        (5, 0, 0.95, ValueError),
        (6, 5, 0.95, ValueError),
        (1.5, 5, 0.95, TypeError),
        (1, 5, 1.0, ValueError),
    ],
)
def test_bounds_reject_bad_input(k, n, confidence, error):
    with pytest.raises(error):
        wilson_bounds(k, n, confidence)


def test_threshold_verdicts():
    assert threshold_verdict(0.81, 0.9, 0.8) == "pass"
    assert threshold_verdict(0.8, 0.9, 0.8) == "pass"
    assert threshold_verdict(0.6, 0.79, 0.8) == "fail"
    assert threshold_verdict(0.75, 0.85, 0.8) == "inconclusive"
    assert threshold_verdict(0.75, 0.85, None) == "n/a"


# ---------------------------------------------------------------------------------- paired tests


@pytest.mark.parametrize(("losses", "gains"), [(10, 2), (5, 5), (0, 4), (30, 12), (1, 0)])
def test_mcnemar_without_margin_is_the_exact_binomial_test(losses, gains):
    expected = binomtest(losses, losses + gains, 0.5, alternative="greater").pvalue
    if losses == 0:
        expected = 1.0
    assert mcnemar_drop_pvalue(losses, gains, 200) == pytest.approx(expected)


def test_mcnemar_margin_makes_the_test_stricter():
    p0 = mcnemar_drop_pvalue(20, 4, 500, 0.0)
    p1 = mcnemar_drop_pvalue(20, 4, 500, 0.01)
    p2 = mcnemar_drop_pvalue(20, 4, 500, 0.02)
    assert p0 < p1 < p2
    # 24 discordant pairs cannot show a drop larger than 0.05 * 500 = 25 samples.
    assert mcnemar_drop_pvalue(24, 0, 500, 0.05) == 1.0
    assert mcnemar_drop_pvalue(0, 0, 500) == 1.0


def test_mcnemar_margin_false_alarm_rate_at_the_margin():
    # Paired outcomes whose true drop equals the margin must not be flagged more than ~alpha.
    n, margin, p_loss, p_gain = 400, 0.02, 0.05, 0.03
    p_none = 1 - p_loss - p_gain
    rate = 0.0
    for losses in range(0, 60):
        for gains in range(0, 45):
            prob = math.comb(n, losses) * math.comb(n - losses, gains)
            prob *= p_loss**losses * p_gain**gains * p_none ** (n - losses - gains)
            if prob > 1e-12 and mcnemar_drop_pvalue(losses, gains, n, margin) <= 0.05:
                rate += prob
    assert rate <= 0.07


def test_holm_adjustment_known_example():
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([]) == []
    assert holm_adjust([0.5, 0.9]) == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------------------- specs


def test_spec_from_kwargs_normalises_and_sorts():
    spec = GateSpec.from_kwargs(
        "g", {"eps": [0.2, 0.1], "min_accuracy": [0.5, 0.8], "attack": "PGD", "method": "cp"}
    )
    assert spec.eps == (0.1, 0.2)
    assert spec.min_accuracy == (0.8, 0.5)
    assert spec.attack == "pgd"
    assert spec.method == "clopper-pearson"
    single = GateSpec.from_kwargs("g", {"eps": 0.3, "min_accuracy": 0.9})
    assert single.eps == (0.3,)
    assert single.min_accuracy == (0.9,)
    broadcast = GateSpec.from_kwargs("g", {"eps": [0.1, 0.3], "min_accuracy": 0.4})
    assert broadcast.min_accuracy == (0.4, 0.4)


def test_spec_overrides_ignore_none_and_revalidate():
    spec = GateSpec.from_kwargs("g", {"eps": 0.1, "n_examples": 100})
    assert spec.with_overrides(n_examples=None).n_examples == 100
    assert spec.with_overrides(n_examples=20, confidence=0.99).confidence == 0.99
    with pytest.raises(GateConfigError, match="confidence"):
        spec.with_overrides(confidence=1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"eps": 0.1, "min_acuracy": 0.5},
            "unknown robustness gate argument 'min_acuracy'.*min_accuracy",
        ),
        ({"eps": 0.1, "steps": 10}, "attack_kwargs"),
        ({"eps": 0.1, "min_accuracy": 1.5}, r"min_accuracy must be in \[0, 1\]"),
        ({"eps": 0.1, "min_accuracy": 85}, "fraction"),
        ({"eps": 0.1, "min_accuracy": -0.1}, r"\[0, 1\]"),
        ({"eps": [0.1, 0.2], "min_accuracy": [0.5, 0.4, 0.3]}, "3 values for 2 eps"),
        ({"min_accuracy": 0.5}, "eps is required"),
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": []}, "eps is empty"),
        ({"eps": "0.3"}, "eps must be a number"),
        ({"eps": [0.1, 0.1]}, "duplicates"),
        ({"eps": 0.1, "n_examples": 0}, "n_examples must be >= 1"),
        ({"eps": 0.1, "n_examples": 1.5}, "n_examples must be an integer"),
        ({"eps": 0.1, "confidence": 0.3}, "confidence"),
        ({"eps": 0.1, "margin": 1.0}, "margin"),
        ({"eps": 0.1, "norm": "l1"}, "norm must be one of"),
        ({"eps": 0.1, "split": "val"}, "split must be one of"),
        ({"eps": 0.1, "inconclusive": "maybe"}, "inconclusive must be one of"),
        ({"eps": 0.1, "allow_masking": "yes"}, "allow_masking must be True or False"),
        ({"eps": 0.1, "attack_kwargs": {"seed": 3}}, "gate's seed= setting"),
        ({"eps": 0.1, "attack_kwargs": {"eval_mode": False}}, "eval mode"),
        ({"eps": 0.1, "attack_kwargs": [1, 2]}, "mapping"),
        ({"eps": 0.1, "method": "bayes"}, "method must be one of"),
    ],
)
def test_spec_rejects_bad_settings_with_clear_messages(kwargs, message):
    with pytest.raises(GateConfigError, match=message):
        GateSpec.from_kwargs("g", kwargs)


# ---------------------------------------------------------------------------------- results


def _result(
    outcomes, *, thresholds=0.5, gate_id="tests/test_x.py::test_gate", confidence=0.95, **spec_kw
):
    eps = spec_kw.pop("eps", [0.1 * (i + 1) for i in range(len(outcomes))])
    spec = GateSpec.from_kwargs(
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
    return GateResult(
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


def test_rows_and_overall_verdicts():
    strong = [True] * 180 + [False] * 20  # 0.90
    weak = [True] * 60 + [False] * 140  # 0.30
    res = _result([strong, weak], thresholds=[0.8, 0.2])
    assert [r.verdict for r in res.rows] == ["pass", "pass"]
    assert res.rows[0].accuracy == pytest.approx(0.9)
    assert res.verdict == "pass"
    assert not res.failed()
    failing = _result([strong, weak], thresholds=[0.8, 0.4])
    assert failing.verdict == "fail"
    assert failing.failed()
    unsure = _result([strong], thresholds=0.9)
    assert unsure.verdict == "inconclusive"
    assert unsure.failed()  # default policy: fail
    assert not unsure.failed("warn")
    assert not unsure.failed("pass")
    unsure.refusals.append("gradient masking flagged")
    assert unsure.verdict == "refused"
    assert unsure.failed("pass")


def test_sample_hash_depends_on_dataset_split_and_indices():
    h = gates.sample_list_hash("digits", "test", [1, 2, 3])
    assert h == gates.sample_list_hash("digits", "test", [1, 2, 3])
    assert h != gates.sample_list_hash("digits", "train", [1, 2, 3])
    assert h != gates.sample_list_hash("mnist", "test", [1, 2, 3])
    assert h != gates.sample_list_hash("digits", "test", [1, 2, 4])


# ---------------------------------------------------------------------------------- baselines


def test_baseline_roundtrip_compare_and_holm(tmp_path):
    base_outcomes = [[True] * 150 + [False] * 50]
    path = gates.save_baseline(tmp_path / "b.json", [_result(base_outcomes)])
    doc = gates.load_baseline(path)
    entry = doc["gates"]["tests/test_x.py::test_gate"]
    assert entry["robust"][0] == "1" * 150 + "0" * 50
    assert entry["model_digest"] == "abc"
    assert {"python", "torch", "numpy"} <= set(doc["versions"])

    same = _result(base_outcomes)
    gates.compare_to_baseline(same, entry)
    assert (same.rows[0].losses, same.rows[0].gains) == (0, 0)
    assert same.rows[0].regression == "ok"

    dropped = _result([[True] * 100 + [False] * 100])
    gates.compare_to_baseline(dropped, entry, family_size=1)
    assert (dropped.rows[0].losses, dropped.rows[0].gains) == (50, 0)
    assert dropped.rows[0].regression == "regressed"
    assert dropped.verdict == "fail"

    # A drop within the margin passes.
    tolerated = _result([[True] * 145 + [False] * 55], margin=0.05)
    gates.compare_to_baseline(tolerated, entry)
    assert tolerated.rows[0].regression == "ok"


def test_holm_resolves_pending_rows_across_gates(tmp_path):
    base = [[True] * 150 + [False] * 50]
    entry = gates.baseline_entry(_result(base))
    # 7 losses, 0 gains: p = 2**-7 = 0.0078; Bonferroni over 10 comparisons would need 0.005.
    small_drop = _result([[True] * 143 + [False] * 57])
    gates.compare_to_baseline(small_drop, entry, family_size=10)
    assert small_drop.rows[0].regression == "pending"
    newly = gates.apply_holm([small_drop])
    assert newly == [(small_drop, small_drop.rows[0])]
    assert small_drop.rows[0].regression == "regressed"
    assert small_drop.rows[0].p_adjusted == pytest.approx(2**-7)

    a = _result([[True] * 143 + [False] * 57])
    b = _result([[True] * 146 + [False] * 54])  # 4 losses: p = 1/16
    for r in (a, b):
        gates.compare_to_baseline(r, entry, family_size=2)
    gates.apply_holm([a, b])
    assert a.rows[0].p_adjusted == pytest.approx(2 * 2**-7)
    assert a.rows[0].regression == "regressed"
    assert b.rows[0].regression == "ok"


def test_baseline_from_another_attack_config_is_refused(tmp_path):
    entry = gates.baseline_entry(_result([[True] * 10]))
    entry["attack_config"]["attack"]["steps"] = 40
    with pytest.raises(
        BaselineError, match=r"another attack config \(attack.steps: 40 \(baseline\) != 10"
    ):
        gates.compare_to_baseline(_result([[True] * 10]), entry)


def test_baseline_from_another_sample_list_is_refused():
    entry = gates.baseline_entry(_result([[True] * 10]))
    with pytest.raises(BaselineError, match="another sample list"):
        gates.compare_to_baseline(_result([[True] * 12]), entry)


def test_load_baseline_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(BaselineError, match=r"not found.*--robustness-save-baseline"):
        gates.load_baseline(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(BaselineError, match="not a robustness baseline"):
        gates.load_baseline(tmp_path / "other.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BaselineError, match="cannot read"):
        gates.load_baseline(tmp_path / "broken.json")


def test_save_baseline_keeps_other_gates(tmp_path):
    path = tmp_path / "b.json"
    gates.save_baseline(path, [_result([[True] * 10], gate_id="a.py::one")])
    gates.save_baseline(path, [_result([[False] * 10], gate_id="a.py::two")])
    assert sorted(gates.load_baseline(path)["gates"]) == ["a.py::one", "a.py::two"]


# ---------------------------------------------------------------------------------- reports


def test_table_lists_every_column_and_row():
    res = _result([[True] * 90 + [False] * 10, [True] * 30 + [False] * 70], thresholds=[0.8, 0.5])
    table = gates.render_table([res])
    header = table.splitlines()[0].split()
    assert header == ["gate", "attack", "eps", "n", "accuracy", "interval", "threshold", "verdict"]
    rows = table.splitlines()[2:4]
    assert "0.900" in rows[0]
    assert ">= 0.8" in rows[0]
    assert rows[0].rstrip().endswith("PASS")
    assert rows[1].rstrip().endswith("FAIL")
    lo, hi = res.rows[1].lower, res.rows[1].upper
    assert f"[{lo:.3f}, {hi:.3f}]" in rows[1]
    assert "one-sided 95% wilson" in table
    message = gates.failure_message(res)
    assert message.startswith("robustness gate 'test_gate': FAIL")
    assert table in message


def test_table_shows_baseline_columns_and_refusals():
    entry = gates.baseline_entry(_result([[True] * 100]))
    res = _result([[True] * 60 + [False] * 40])
    gates.compare_to_baseline(res, entry)
    res.refusals.append("gradient masking flagged")
    table = gates.render_table([res])
    assert table.splitlines()[0].split()[-3:] == ["baseline", "change", "p(drop)"]
    assert "-0.400" in table
    assert "FAIL (drop)" in table
    assert "REFUSED: gradient masking flagged" in table


def test_report_file_is_json_with_per_sample_outcomes(tmp_path):
    res = _result([[True, False, True, True]], thresholds=0.5)  # 3/4: bounds [0.36, 0.94]
    path = gates.write_report(tmp_path / "out" / "report.json", [res], session="x")
    doc = json.loads(path.read_text())
    assert doc["format"] == gates.REPORT_FORMAT
    assert doc["summary"] == {"inconclusive": 1}
    assert doc["session"] == "x"
    (gate,) = doc["gates"]
    assert gate["robust"] == ["1011"]
    assert gate["rows"][0]["accuracy"] == 0.75
    assert gate["spec"]["min_accuracy"] == [0.5]
    assert gate["verdict"] == "inconclusive"
