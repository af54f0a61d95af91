"""Reports: the terminal table, failure messages and the JSON report."""

from __future__ import annotations

import json

from robustbench_local import gates


def test_table_lists_every_column_and_row(make_result):
    res = make_result(
        [[True] * 90 + [False] * 10, [True] * 30 + [False] * 70], thresholds=[0.8, 0.5]
    )
    table = gates.render_table([res])
    header = table.splitlines()[0].split()
    assert header == [
        "gate", "attack", "eps", "n", "attack", "only", "accuracy", "interval", "threshold",
        "verdict",
    ]  # fmt: skip
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


def test_table_shows_baseline_columns_and_refusals(make_result):
    entry = gates.baseline_entry(make_result([[True] * 100]))
    res = make_result([[True] * 60 + [False] * 40])
    gates.compare_to_baseline(res, entry)
    res.refusals.append("gradient masking flagged")
    table = gates.render_table([res])
    assert table.splitlines()[0].split()[-3:] == ["baseline", "change", "p(drop)"]
    assert "-0.400" in table
    assert "FAIL (drop)" in table
    assert "REFUSED: gradient masking flagged" in table


def test_report_file_is_json_with_per_sample_outcomes(make_result, tmp_path):
    res = make_result([[True, False, True, True]], thresholds=0.5)  # 3/4: bounds [0.36, 0.94]
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


def test_table_shows_the_attack_alone_beside_the_worst_case_with_the_reference(make_result):
    from robustbench_local import gates as g

    res = make_result([[True] * 40 + [False] * 60])
    res.rows = g.make_rows(res.spec, res.outcomes, [[True] * 70 + [False] * 30], [True])
    res.reference = {"mode": "explicit", "reduced": True}
    table = gates.render_table([res])
    row = table.splitlines()[2].split()
    assert row[4:6] == ["0.700", "0.400*"]
    assert "worst case of the attack and the reference suite (* where the reference ran)" in table
    assert "test_gate: reference: reduced settings" in table
    d = res.to_dict()
    assert d["rows"][0]["attack_accuracy"] == 0.7 and d["rows"][0]["accuracy"] == 0.4
    assert d["rows"][0]["reference_ran"] is True and d["reference"]["reduced"]
    res.reference = {"mode": "off"}
    assert "reference: not run (reference: false)" in gates.render_table([res])
