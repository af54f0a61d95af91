"""Loading the plugin: the entry point, ``-p`` with the new and the old module path, conftests.

Whatever combination loads it, the plugin's hooks are registered exactly once.
"""

from __future__ import annotations

import importlib.metadata

import pytest

import robustbench_local.gates.plugin as plugin

pytest_plugins = ["pytester"]

OLD = "robustbench_local.pytest_plugin"
NEW = "robustbench_local.gates.plugin"

REGISTERED_ONCE = """
import robustbench_local.gates.plugin as plugin


def test_registered_once(pytestconfig):
    pm = pytestconfig.pluginmanager
    names = [name for name, p in pm.list_name_plugin() if p is plugin]
    hooks = [impl for impl in pm.hook.pytest_addoption.get_hookimpls() if impl.plugin is plugin]
    assert (names, len(hooks)) == ([{name!r}], 1)
    assert pytestconfig.getoption("robustness_report") == "r.json"
"""


def test_entry_point_is_the_gates_plugin():
    (ep,) = importlib.metadata.entry_points(group="pytest11", name="robustness")
    assert ep.value == NEW
    assert ep.load() is plugin
    assert ep.name == plugin.ENTRY_POINT


@pytest.mark.parametrize(
    ("args", "conftest", "autoload", "name"),
    [
        ([], None, True, "robustness"),
        (["-p", "robustness"], None, True, "robustness"),
        (["-p", OLD], None, True, "robustness"),
        (["-p", OLD, "-p", "robustness"], None, True, "robustness"),
        ([], OLD, True, "robustness"),
        (["-p", OLD], OLD, True, "robustness"),
        (["-p", "robustness"], None, False, "robustness"),
        (["-p", OLD], None, False, "robustness"),
        ([], OLD, False, "robustness"),
        (["-p", NEW], None, False, NEW),
        (["-p", NEW], OLD, False, NEW),
    ],
)
def test_every_way_of_loading_registers_the_hooks_once(
    pytester, monkeypatch, args, conftest, autoload, name
):
    if autoload:
        monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    else:
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    if conftest:
        pytester.makeconftest(f"pytest_plugins = [{conftest!r}]\n")
    pytester.makepyfile(test_load=REGISTERED_ONCE.format(name=name))
    result = pytester.runpytest(*args, "-p", "no:cacheprovider", "--robustness-report=r.json")
    result.assert_outcomes(passed=1)


def test_blocking_the_plugin_also_blocks_the_old_path(pytester):
    pytester.makepyfile("def test_plain():\n    pass\n")
    for args in (["-p", "no:robustness"], ["-p", "no:robustness", "-p", OLD]):
        result = pytester.runpytest(*args, "-p", "no:cacheprovider", "--robustness-report=r.json")
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(["*unrecognized arguments: --robustness-report=r.json*"])


def test_old_module_keeps_its_names_and_defines_no_hooks_of_its_own():
    import robustbench_local.pytest_plugin as old

    for name in ("GateSession", "GateFile", "GateItem", "RobustnessGate", "MARKER"):
        assert getattr(old, name) is getattr(plugin, name)
    assert (old.DEFAULT_BASELINE, old.GATE_FILE_PATTERNS) == (
        "robustness_baseline.json",
        ["*robustness_gates*.yaml", "*robustness_gates*.yml"],
    )
    hooks = sorted(n for n in vars(old) if n.startswith("pytest_"))
    assert hooks == ["pytest_addhooks"]
    assert not hasattr(old, "robustness_gate")  # the fixture is registered once, by the plugin
