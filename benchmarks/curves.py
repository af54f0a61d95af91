"""Robustness curves: ``robustness_curve``'s strategy vs. the same attack from scratch at every eps.

An 8-point linf curve (eps 0.05 to 0.4) of PGD-40 with its default step rule (2.5 eps / 40,
random start, early stop) on ``--n`` MNIST test images, computed three ways on each model:

- scratch: the attack run from scratch at every eps on every sample (its own defaults, early
  stop included), with the samples' indices as ids, as a user without a curve tool would;
- ``robustness_curve(..., strategy=S)`` with checks and the reference suite off (default
  ``S = "auto"``, the descent of :mod:`robustbench_local.strategies`);
- ``robustness_curve(..., strategy="nested")``, the survivors-only schedule of the sealed call.

Models (``mnist_small_cnn``, trained once and cached under ``--cache-dir``):

- standard: 1 epoch of standard training on the 60k MNIST training images;
- fast-AT: ``defenses.create("fgsm_at")`` with the repository's recipe (Wong et al. 2020:
  FGSM-RS, eps 0.3, alpha 0.375, cyclic lr, 10 epochs) on the 60k training images;
- FGSM-trained: ``fgsm_at`` for 5 epochs on a seeded 10k subset.

Per model it prints the per-eps accuracy of each and the check "curve <= scratch + 0.5
points"; then the cost: wall time (median over ``--repeats``; each repeat runs all three
back to back, so the ratios are taken within one run) and passes (per-sample forward and
backward passes, deterministic). Targets: cost ratio <= 1/3 on the adversarially trained
models, <= 0.6 on the standard one. ``--quick`` uses a standard model trained on 5k images and
the FGSM-trained one, and attacks 200 images once (a smoke test; its timings mean little).

Usage:
    python benchmarks/curves.py [--n 1000] [--repeats 3] [--threads 1] [--strategy auto]
        [--cache-dir outputs/benchmarks/curves] [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir

log = logging.getLogger("benchmarks.curves")
EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
STEPS, SLACK = 40, 0.005


@dataclass(frozen=True)
class Recipe:
    """How a benchmark model is trained (and its cache file name)."""

    label: str
    defense: str
    epochs: int
    train_n: int | None  # None: the whole training set
    target: float  # cost-ratio target
    kwargs: dict = field(default_factory=dict)

    def file(self, seed: int) -> str:
        n = "all" if self.train_n is None else self.train_n
        return f"{self.defense}_{self.epochs}ep_{n}_seed{seed}.pt"


RECIPES = [
    Recipe("standard (1 ep)", "standard", 1, None, 0.6),
    Recipe("fast-AT (fgsm_at recipe, 10 ep)", "fgsm_at", 10, None, 1 / 3),
    Recipe("FGSM-trained (fgsm_at, 5 ep, 10k)", "fgsm_at", 5, 10_000, 1 / 3),
]
QUICK = [Recipe("standard (1 ep, 5k)", "standard", 1, 5_000, 0.6), RECIPES[2]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="MNIST test images (1000; quick 200)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (3; quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--strategy", default="auto", help="robustness_curve strategy (auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="outputs/benchmarks/curves", help="trained models")
    p.add_argument("--data-dir", default=None, help="MNIST mirror (default: env, ../shared)")
    p.add_argument("--only", default="", help="run only the models whose label contains this")
    p.add_argument("--quick", action="store_true", help="small models, 200 images, 1 repeat")
    args = p.parse_args(argv)
    args.n = args.n or (200 if args.quick else 1000)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if min(args.n, args.repeats, args.threads, args.batch_size) < 1:
        p.error("--n, --repeats, --threads and --batch-size must be positive")
    return args


def get_model(recipe: Recipe, train, args: argparse.Namespace) -> nn.Module:
    """The recipe's model from the cache, else trained (seeded) and cached."""
    path = Path(args.cache_dir) / recipe.file(args.seed)
    if path.exists():
        return rbl.load_checkpoint(path).eval()
    data = train if recipe.train_n is None else rbl.subset(train, recipe.train_n, seed=args.seed)
    torch.manual_seed(args.seed)
    defense = defenses.create(
        recipe.defense, epochs=recipe.epochs, seed=args.seed, progress=False, **recipe.kwargs
    )
    start = time.perf_counter()
    model = defense.fit(rbl.create_model("mnist_small_cnn"), data).eval()
    log.info("trained %s in %.0f s -> %s", recipe.label, time.perf_counter() - start, path)
    rbl.save_checkpoint(model, path, arch="mnist_small_cnn")
    return model


@dataclass
class Run:
    """One way of computing the curve: accuracy per eps and cost."""

    acc: list[float]
    wall: float
    cpu: float
    n_forward: int
    n_backward: int

    @property
    def passes(self) -> int:
        return self.n_forward + self.n_backward


def scratch(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Run:
    """The attack from scratch at every eps on every sample (ids: the sample indices)."""
    pgd = attacks.create("pgd", steps=STEPS, seed=0)
    ids = torch.arange(len(y))
    robust, fwd, bwd = torch.zeros(len(EPS)), 0, 0
    start, cpu = time.perf_counter(), time.process_time()
    for k, e in enumerate(EPS):
        for i in range(0, len(y), batch_size):
            sl = slice(i, i + batch_size)
            res = pgd(model, x[sl], y[sl], eps=e, ids=ids[sl])
            robust[k] += float((~res.success).sum())
            fwd, bwd = fwd + res.n_forward, bwd + res.n_backward
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run((robust / len(y)).tolist(), wall, cpu, fwd, bwd)


def curve(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, strategy: str) -> Run:
    """``robustness_curve`` with checks and the reference suite off."""
    kw = (
        {"reference": False}
        if "reference" in inspect.signature(rbl.robustness_curve).parameters
        else {}
    )
    pgd = attacks.create("pgd", steps=STEPS, seed=0)
    start, cpu = time.perf_counter(), time.process_time()
    c = rbl.robustness_curve(
        model,
        (x, y),
        {"pgd": pgd},
        EPS,
        batch_size=batch_size,
        checks=False,
        progress=False,
        strategy=strategy,
        **kw,
    )
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    cost = c.cost["pgd"]
    fwd, bwd = int(cost["n_forward"]), int(cost["n_backward"])
    return Run(c.accuracy("pgd").tolist(), wall, cpu, fwd, bwd)


def measure(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace) -> dict:
    """Every way ``args.repeats`` times, back to back; runs per way and per-repeat ratios."""
    ways = {
        "scratch": lambda: scratch(model, x, y, args.batch_size),
        args.strategy: lambda: curve(model, x, y, args.batch_size, args.strategy),
        "nested": lambda: curve(model, x, y, args.batch_size, "nested"),
    }
    runs: dict[str, list[Run]] = {k: [] for k in ways}
    for r in range(args.repeats):
        for name, fn in ways.items():
            runs[name].append(fn())
            log.info(
                "repeat %d %s: %.1f s (cpu %.1f s)",
                r + 1,
                name,
                runs[name][-1].wall,
                runs[name][-1].cpu,
            )
    return runs


def report(recipe: Recipe, model: nn.Module, x: Tensor, y: Tensor, args) -> bool:
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    runs = measure(model, x, y, args)
    base, ours, nested = runs["scratch"][0], runs[args.strategy][0], runs["nested"][0]
    print(f"\n{recipe.label}: clean accuracy {clean:.2%} on {len(y)} MNIST test images")
    print(f"{'eps':>6} {'scratch':>9} {args.strategy:>9} {'diff':>8} {'<= +0.5p':>9} {'nested':>9}")
    acc_ok = True
    for e, a, b, c in zip(EPS, base.acc, ours.acc, nested.acc, strict=True):
        ok = b <= a + SLACK
        acc_ok &= ok
        verdict = "ok" if ok else "FAIL"
        print(f"{e:>6.2f} {a:>9.2%} {b:>9.2%} {100 * (b - a):>+7.1f}p {verdict:>9} {c:>9.2%}")

    def ratio(name: str, what: str = "wall") -> float:  # median of the per-repeat ratios
        pairs = zip(runs[name], runs["scratch"], strict=True)
        return statistics.median(getattr(w, what) / getattr(s, what) for w, s in pairs)

    t_base = statistics.median(r.wall for r in runs["scratch"])
    c_base = statistics.median(r.cpu for r in runs["scratch"])
    print(
        f"scratch: {t_base:.1f} s (cpu {c_base:.1f} s; medians of {args.repeats}), "
        f"{base.n_backward:,} fwd+bwd "
        f"+ {base.n_forward - base.n_backward:,} fwd passes"
    )
    for name, run in ((args.strategy, ours), ("nested", nested)):
        print(
            f"{name}: time {ratio(name):.3f} of scratch (cpu {ratio(name, 'cpu'):.3f}), "
            f"passes {run.passes / base.passes:.3f} "
            f"(backward {run.n_backward / base.n_backward:.3f}, forward "
            f"{run.n_forward / base.n_forward:.3f})"
        )
    time_ok = ratio(args.strategy) <= recipe.target
    pass_ok = ours.passes / base.passes <= recipe.target
    print(
        f"targets ({args.strategy}): time <= {recipe.target:.3g}: {'PASS' if time_ok else 'FAIL'}; "
        f"passes <= {recipe.target:.3g}: {'PASS' if pass_ok else 'FAIL'}; "
        f"accuracy <= scratch + 0.5p at every eps: {'PASS' if acc_ok else 'FAIL'}"
    )
    return time_ok and pass_ok and acc_ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    x, y = (t[: args.n].contiguous() for t in test.tensors)
    print(
        f"linf PGD-{STEPS} (step 2.5 eps/{STEPS}, random start, early stop) at eps {EPS} on "
        f"{args.n} MNIST test images; strategy {args.strategy!r}; {args.threads} torch "
        f"thread(s), torch {torch.__version__}, batch {args.batch_size}, {args.repeats} repeat(s)"
    )
    ok = [
        report(r, get_model(r, train, args), x, y, args)
        for r in (QUICK if args.quick else RECIPES)
        if args.only in r.label
    ]
    return 0 if args.quick or all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
