"""The health vocabulary: Flag, its JSON form and text, and the error policy."""

from __future__ import annotations

import json

import pytest

from robustbench_local.health import Flag, failed, passed, raise_on_errors, summarize


def test_flag_round_trips_and_validates():
    f = Flag("monotone", False, "warning", "m", "a", {"x": 1})
    assert Flag.from_dict(json.loads(json.dumps(f.to_dict()))) == f
    assert str(f) == "[WARNING] monotone: m -> a"
    assert str(passed("monotone", "fine", n=3)) == "[ok] monotone: fine"
    assert passed("monotone", "fine", n=3).details == {"n": 3}
    with pytest.raises(ValueError, match="severity"):
        Flag("monotone", False, "fatal", "m")


def test_summarize_lists_failures_first():
    flags = [passed("b", "fine"), failed("c", "warning", "odd", "look"), passed("a", "fine")]
    assert summarize(flags).splitlines() == [
        "[WARNING] c: odd -> look",
        "[ok] a: fine",
        "[ok] b: fine",
    ]


def test_raise_on_errors_only_for_error_severity():
    raise_on_errors([failed("c", "warning", "odd", "look")])  # warnings do not raise
    with pytest.raises(ValueError, match=r"^the model fails the preflight: bad input fix it$"):
        raise_on_errors([failed("x", "error", "bad input", "fix it"), passed("y", "fine")])
