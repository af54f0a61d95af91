"""How much do tests' measured figures move across CPU kernel sets?

PyTorch picks its CPU kernels (``default``, ``avx2``, ``avx512``...) at start-up; the variable
``ATEN_CPU_CAPABILITY`` forces one. Float sums then differ in their last bits, an optimiser's
path moves, and a test comparing an attack's outcome with an oracle's or with a fixed figure
sees a different number. This script runs the given tests once per kernel set, each in its own
pytest process with the variable set (``native``: unset, the CPU's best kernels), and prints,
per test, the pass/fail outcome and every figure the test recorded with pytest's
``record_property(name, value)`` fixture (read back from a JUnit XML report), with the spread
(max - min) over the kernel sets. A tolerance next to such a figure should cover that spread
with a margin; the measured values belong in a comment next to the bound.

Usage:
    python benchmarks/kernel_spread.py tests/attacks/test_minnorm_oracle.py
    python benchmarks/kernel_spread.py "tests/attacks/test_minnorm.py::test_breaks_every_digit" \
        [--kernels default,avx2,native] [--out spread.json] [--pytest-args "-m slow"]

"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KERNELS = ("default", "avx2", "native")

Figures = dict[str, dict[str, object]]  # test id -> {"outcome": str, figure name: value}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("tests", nargs="+", help="pytest node ids or files")
    p.add_argument("--kernels", default=",".join(KERNELS), help="default, avx2, avx512, native")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON")
    p.add_argument("--pytest-args", default="", help='more pytest arguments, e.g. "-m slow"')
    args = p.parse_args(argv)
    args.pytest_args = shlex.split(args.pytest_args)
    return args


def kernel_env(kernel: str) -> dict[str, str]:
    """The environment of a process that runs with ``kernel`` (``native``: the variable unset)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
    return env


def capability(kernel: str) -> str:
    """The kernel set torch really uses under ``kernel`` (e.g. ``AVX512`` for native)."""
    code = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=kernel_env(kernel), capture_output=True, text=True
    )
    return out.stdout.strip() or "?"


def read_report(path: Path) -> Figures:
    """Outcome and recorded properties of every test case of a JUnit XML report."""
    figures: Figures = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "skipped"}[tag]
        row: dict[str, object] = {"outcome": outcome}
        for prop in case.iter("property"):
            row[prop.get("name", "?")] = prop.get("value")
        figures[test] = row
    return figures


def run_kernel(kernel: str, tests: list[str], extra: list[str]) -> Figures:
    """Run ``tests`` under ``kernel`` in a fresh pytest process; their figures."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        cmd += ["-o", "junit_family=xunit1", f"--junitxml={report}", *extra, *tests]
        proc = subprocess.run(
            cmd, env=kernel_env(kernel), cwd=REPO, capture_output=True, text=True, check=False
        )
        if not report.exists():
            raise RuntimeError(
                f"pytest wrote no report under {kernel}: {' '.join(cmd)}\n{proc.stdout[-2000:]}"
            )
        return read_report(report)


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def print_table(by_kernel: dict[str, Figures], labels: dict[str, str]) -> None:
    """Per test: outcome and every recorded figure per kernel set, and its spread."""
    kernels = list(by_kernel)
    tests = sorted({t for figs in by_kernel.values() for t in figs})
    head = "".join(f"{labels[k]:>16}" for k in kernels)
    print(f"\n{'test / figure':<60}{head}{'spread':>10}")
    for test in tests:
        rows = {k: by_kernel[k].get(test, {}) for k in kernels}
        names = sorted({n for r in rows.values() for n in r} - {"outcome"})
        outcomes = "".join(f"{rows[k].get('outcome', '-')!s:>16}" for k in kernels)
        print(f"{test[-60:]:<60}{outcomes}")
        for name in names:
            values = [_number(rows[k].get(name)) for k in kernels]
            cells = "".join(f"{'-' if v is None else f'{v:.4f}':>16}" for v in values)
            known = [v for v in values if v is not None]
            spread = f"{max(known) - min(known):>10.4f}" if known else f"{'-':>10}"
            print(f"{'  ' + name:<60}{cells}{spread}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kernels = args.kernels.split(",")
    labels = {k: f"{k} ({capability(k)})" if k == "native" else k for k in kernels}
    by_kernel = {k: run_kernel(k, args.tests, args.pytest_args) for k in kernels}
    print(f"torch {torch.__version__}")
    print_table(by_kernel, labels)
    if args.out is not None:
        args.out.write_text(json.dumps(by_kernel, indent=1) + "\n")


if __name__ == "__main__":
    main()
