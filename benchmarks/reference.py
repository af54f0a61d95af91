"""Trap models vs. the reference AutoAttack: is the number a user sees a false sense of security?

For each model of :mod:`benchmarks.trap_models` (traps that make weak evaluations overestimate
robustness, plus honest ones), on the first ``--n`` MNIST test images at linf ``--eps``, this
prints one row:

* ``AA``: the reference AutoAttack (``pyautoattack.AutoAttack(model, norm="Linf", eps=eps,
  version="standard")``; ``version="rand"`` for the random model) and its wall time;
* ``suite``: ``rbl.standard_suite("linf")`` called directly as a plain attack on the same
  samples (no checks, no second reference) and its wall time, and ``suite/AA`` the time ratio;
* ``curve``: the everyday call ``rbl.robustness_curve(model, data, ["fgsm", "pgd"],
  [0.1, 0.2, 0.3])`` with default settings: its worst case at the largest eps, its headline
  and the health flags that fired;
* ``best``: the best known attack on the model (the lowest of the above and the curve's
  adaptive rows), and whether issue 10's targets hold: suite <= AA + 0.5 points (+1 for the
  random model), curve within 2 points of the best known.

A last row sums the wall times over the models (target: suite <= 0.5 x AA). Whatever
``rbl.standard_suite`` and ``rbl.robustness_curve`` do by default is what is measured (the
script uses public names only), so new members of the suite and the default reference of the
curve are picked up without changes.

Usage:
    python benchmarks/reference.py                       # every model, 500 images (the lead's run)
    python benchmarks/reference.py --quick               # 2 models, 50 images: a few minutes
    python benchmarks/reference.py --models standard,logits_x1e4 --n 200 --out results.json
        [--cache ~/.cache/robustbench_local/trap_models] [--threads N] [--device cpu]

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack).
    Carlini et al., "On Evaluating Adversarial Robustness", arXiv:1902.06705, 2019.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robustbench_local as rbl
from benchmarks import trap_models
from benchmarks._common import default_data_dir
from defenses.storage import atomic_write_json

QUICK_MODELS = ("standard", "logits_x1e4")
CURVE_ATTACKS = ["fgsm", "pgd"]
CURVE_EPS = [0.1, 0.2, 0.3]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models", default=None, help=f"comma-separated, from: {', '.join(trap_models.TRAPS)}"
    )
    p.add_argument("--n", type=int, default=500, help="test images (the first n)")
    p.add_argument("--eps", type=float, default=0.3)
    p.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_MODELS)} on 50 images")
    p.add_argument("--cache", default=trap_models.DEFAULT_CACHE, help="trained weights folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    args = p.parse_args(argv)
    if args.quick:
        args.n = min(args.n, 50)
        args.models = args.models or ",".join(QUICK_MODELS)
    names = args.models.split(",") if args.models else list(trap_models.TRAPS)
    unknown = [m for m in names if m not in trap_models.TRAPS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(trap_models.TRAPS)}")
    args.models = names
    return args


def _standard_suite() -> Any:
    """``rbl.standard_suite`` (public), or its home module's until it is re-exported."""
    try:
        return rbl.standard_suite
    except AttributeError:
        from robustbench_local.benchmark import standard_suite

        return standard_suite


def autoattack(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, random: bool, args: argparse.Namespace
) -> tuple[float, float]:
    """Robust accuracy under the reference AutoAttack and its wall time."""
    from pyautoattack import AutoAttack

    version = "rand" if random else "standard"
    aa = AutoAttack(
        model, norm="Linf", eps=eps, version=version, device=args.device, seed=args.seed
    )
    aa.verbose = False
    start = time.perf_counter()
    out = aa.run_standard_evaluation(x, y, batch_size=args.batch_size)
    x_adv = out[0] if isinstance(out, tuple) else out  # pyautoattack >= 0.2: (x_adv, y_adv)
    wall = time.perf_counter() - start
    with torch.no_grad():
        robust = torch.cat([model(b).argmax(1) for b in x_adv.split(args.batch_size)]) == y
    return float(robust.float().mean()), wall


def suite(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, args: argparse.Namespace
) -> tuple[float, float]:
    """Robust accuracy under ``rbl.standard_suite("linf")`` called directly, and its wall time."""
    attack = _standard_suite()("linf", seed=args.seed)
    robust, wall = [], 0.0
    ids = torch.arange(x.shape[0], device=x.device)
    for xb, yb, ib in zip(
        x.split(args.batch_size), y.split(args.batch_size), ids.split(args.batch_size), strict=True
    ):
        res = attack(model, xb, yb, eps=eps, ids=ib)
        robust.append(~res.success)
        wall += res.wall_time
    return float(torch.cat(robust).float().mean()), wall


def _headline(curve: Any) -> float:
    """The curve's headline number, whatever form it takes, else its worst case at the top eps."""
    head = getattr(curve, "headline", None)
    if callable(head):
        head = head()
    if isinstance(head, (int, float)):
        return float(head)
    return float(curve.worst_case()[-1])


def everyday_curve(
    model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """The README's everyday call with default settings on the same samples."""
    start = time.perf_counter()
    curve = rbl.robustness_curve(
        model, (x, y), CURVE_ATTACKS, CURVE_EPS, progress=False, seed=args.seed
    )
    wall = time.perf_counter() - start
    per_label = {label: float(curve.accuracy(label)[-1]) for label in curve.attacks}
    return {
        "curve": float(curve.worst_case()[-1]),
        "headline": _headline(curve),
        "curve_labels": per_label,
        "flags": [f.name for f in curve.health if not f.ok],
        "curve_time": wall,
    }


def evaluate(
    name: str, x: Tensor, y: Tensor, train: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """One row of the table."""
    trap = trap_models.TRAPS[name]
    model = trap_models.build(name, train, args.cache, progress=args.progress).to(args.device)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    aa, aa_time = autoattack(model, x, y, args.eps, trap.random, args)
    ours, suite_time = suite(model, x, y, args.eps, args)
    row = {
        "model": name,
        "description": trap.description,
        "honest": trap.honest,
        "random": trap.random,
    }
    row |= {"clean": clean, "aa": aa, "aa_time": aa_time, "suite": ours, "suite_time": suite_time}
    row |= everyday_curve(model, x, y, args)
    row["best"] = min(aa, ours, row["curve"], *row["curve_labels"].values())
    tolerance = 0.01 if trap.random else 0.005
    row["suite_ok"] = ours <= aa + tolerance + 1e-9
    row["curve_ok"] = row["headline"] <= row["best"] + 0.02 + 1e-9
    logging.info("%s: %s", name, row)
    return row


def _fmt_row(r: dict[str, Any]) -> str:
    ratio = r["suite_time"] / r["aa_time"] if r["aa_time"] else float("nan")
    marks = ("ok" if r["suite_ok"] else "FAIL") + "/" + ("ok" if r["curve_ok"] else "FAIL")
    flags = ",".join(r["flags"]) or "none"
    return (
        f"{r['model']:<18}{r['clean']:>7.1%}{r['aa']:>8.1%}{r['aa_time']:>8.1f}s{r['suite']:>8.1%}"
        f"{r['suite_time']:>8.1f}s{ratio:>7.2f}{r['curve']:>8.1%}{r['headline']:>9.1%}{r['best']:>7.1%}"
        f"  {marks:<10}{flags}"
    )


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nMNIST, first {args.n} test images, linf eps {args.eps}; AA = pyautoattack "
        "(standard; rand for random models); suite = rbl.standard_suite('linf') called directly; "
        f"curve = robustness_curve(model, data, {CURVE_ATTACKS}, {CURVE_EPS}), worst case at "
        f"{CURVE_EPS[-1]}"
    )
    print(
        f"{'model':<18}{'clean':>7}{'AA':>8}{'AA t':>9}{'suite':>8}{'suite t':>9}{'ratio':>7}"
        f"{'curve':>8}{'headline':>9}{'best':>7}  {'suite/curve':<10} flags that fired"
    )
    for r in rows:
        print(_fmt_row(r))
    aa_total = sum(r["aa_time"] for r in rows)
    suite_total = sum(r["suite_time"] for r in rows)
    ratio = suite_total / aa_total if aa_total else float("nan")
    verdict = "ok" if ratio <= 0.5 else "FAIL"
    print(
        f"{'sum':<18}{'':>7}{'':>8}{aa_total:>8.1f}s{'':>8}{suite_total:>8.1f}s{ratio:>7.2f}"
        f"  (target <= 0.50: {verdict})"
    )
    print("targets: suite <= AA + 0.5 points (+1 random); curve headline within 2 points of best")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for name in ("auto-attack", "robustbench_local", "attacks"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    x, y = test.tensors
    x, y = x[: args.n].to(args.device), y[: args.n].to(args.device)
    rows = [evaluate(name, x, y, train, args) for name in args.models]
    print_table(rows, args)
    if args.out:
        atomic_write_json(
            args.out, {"args": {k: v for k, v in vars(args).items()}, "rows": rows}, indent=2
        )


if __name__ == "__main__":
    main()
