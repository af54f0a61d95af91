"""Robustness curves: survivors-only nested evaluation vs. attacking every eps from scratch.

Trains two small MNIST CNNs on a subset of the training set (an undefended one, 1 epoch of
standard training, and a briefly adversarially trained one, FGSM-RS fast AT of Wong et al. 2020
for a couple of epochs), then computes an 8-point linf PGD-40 curve (eps 0.05 to 0.4) on ``--n``
MNIST test images in two ways:

(a) naive, as ART and torchattacks do: each eps independently, every sample, all 40 steps;
(b) ``robustbench_local.robustness_curve``: eps in increasing order, only the samples still
    robust at the previous eps are attacked, and a sample stops once it is misclassified;
(c) a proposal for ``robustness_curve``: per-sample bisection over the grid, largest eps first
    (see :func:`bisection_curve`).

It prints one table per model (accuracy per eps for both, time and backward passes) and checks
the targets: (b) takes at most a third of (a)'s time, and at every eps (b)'s accuracy is at most
(a)'s + 0.5 points. With ``--repeats`` > 1, times are medians.

Usage:
    python benchmarks/curves.py [--n 1000] [--data-dir DIR] [--train-n 10000] [--at-epochs 2]
        [--repeats 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import defenses
import robustbench_local as rbl

EPS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
STEPS = 40


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="MNIST test images (default 1000)")
    p.add_argument(
        "--data-dir",
        default=os.environ.get("ROBUSTBENCH_LOCAL_DATA_DIR"),
        help="dataset mirror (default $ROBUSTBENCH_LOCAL_DATA_DIR)",
    )
    p.add_argument("--train-n", type=int, default=10000, help="training images used")
    p.add_argument("--at-epochs", type=int, default=2, help="fast-AT epochs")
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (medians reported)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def train_models(train, args) -> dict[str, nn.Module]:
    """An undefended (1 epoch standard) and a fast-AT (FGSM-RS) mnist_small_cnn."""
    data = rbl.subset(train, min(args.train_n, len(train)), seed=args.seed)
    out = {}
    torch.manual_seed(args.seed)
    std = defenses.create("standard", epochs=1, seed=args.seed, progress=False)
    start = time.perf_counter()
    out["undefended (1 ep standard)"] = std.fit(rbl.create_model("mnist_small_cnn"), data)
    logging.info("standard training: %.0f s", time.perf_counter() - start)
    torch.manual_seed(args.seed)
    at = defenses.create(
        "fgsm_at", eps=0.3, alpha=0.375, epochs=args.at_epochs, seed=args.seed, progress=False
    )
    start = time.perf_counter()
    out[f"fgsm_at ({args.at_epochs} ep)"] = at.fit(rbl.create_model("mnist_small_cnn"), data)
    logging.info("fgsm_at training: %.0f s", time.perf_counter() - start)
    return {k: m.eval() for k, m in out.items()}


def naive_curve(model, x, y, batch_size: int) -> tuple[list[float], float, int]:
    """Each eps from scratch on every sample, all steps (no early stop): ART/torchattacks style."""
    pgd = attacks.create("pgd", steps=STEPS, early_stop=False, seed=0)
    accs, backward, start = [], 0, time.perf_counter()
    for eps in EPS:
        robust = 0
        for i in range(0, x.shape[0], batch_size):
            res = pgd(model, x[i : i + batch_size], y[i : i + batch_size], eps=eps)
            robust += int((~res.success).sum())
            backward += res.n_backward
        accs.append(robust / x.shape[0])
    return accs, time.perf_counter() - start, backward


def nested_curve(model, x, y, batch_size: int, checks: bool) -> tuple[list[float], float, int]:
    """``robustness_curve``: increasing eps, survivors only, early stop."""
    pgd = attacks.create("pgd", steps=STEPS, seed=0)
    start = time.perf_counter()
    curve = rbl.robustness_curve(
        model, (x, y), {"pgd": pgd}, EPS, batch_size=batch_size, checks=checks, progress=False
    )
    wall = time.perf_counter() - start
    return curve.accuracy("pgd").tolist(), wall, int(curve.cost["pgd"]["n_backward"])


def bisection_curve(model, x, y, batch_size: int) -> tuple[list[float], float, int]:
    """(c) A proposal for evaluate.py: per-sample bisection over the grid, largest eps first.

    Each sample's breaking index ``t`` (broken at every eps index >= t) is searched with about
    log2(K + 1) attacks: the largest eps first (a sample that survives it is robust at every
    eps, assuming, like any curve, that an attack failing in a larger ball fails in a smaller
    one), then the middle of the remaining range. Broken at ``eps_m`` means broken at every
    larger eps (nested balls), as in (b).
    """
    pgd = attacks.create("pgd", steps=STEPS, seed=0)
    n, k = x.shape[0], len(EPS)
    start, backward = time.perf_counter(), 0
    with torch.no_grad():
        correct = (
            torch.cat([model(x[i : i + batch_size]).argmax(1) for i in range(0, n, batch_size)])
            == y
        )
    lo = torch.zeros(n, dtype=torch.long)
    hi = torch.where(correct, k, 0)
    first = True
    while bool((lo < hi).any()):
        probe = torch.where(hi == k, k - 1, (lo + hi) // 2) if first else (lo + hi) // 2
        first = False
        open_ = lo < hi
        for m in probe[open_].unique().tolist():
            idx = (open_ & (probe == m)).nonzero().squeeze(1)
            for chunk in idx.split(batch_size):
                res = pgd(model, x[chunk], y[chunk], eps=EPS[m])
                backward += res.n_backward
                broken = res.success.cpu()
                hi[chunk[broken]] = m
                lo[chunk[~broken]] = m + 1
    robust = torch.arange(k).unsqueeze(1) < hi.unsqueeze(0)
    return robust.float().mean(dim=1).tolist(), time.perf_counter() - start, backward


def median_run(fn, repeats: int) -> tuple[list[float], float, int]:
    runs = [fn() for _ in range(repeats)]
    return runs[0][0], statistics.median(r[1] for r in runs), runs[0][2]


def report(label: str, x, y, model, args) -> bool:
    clean = float((model(x).argmax(1) == y).float().mean())
    naive, t_naive, b_naive = median_run(lambda: naive_curve(model, x, y, args.batch_size), 1)
    ours, t_ours, b_ours = median_run(
        lambda: nested_curve(model, x, y, args.batch_size, checks=False), args.repeats
    )
    _, t_checks, _ = median_run(
        lambda: nested_curve(model, x, y, args.batch_size, checks=True), args.repeats
    )
    bis, t_bis, b_bis = median_run(lambda: bisection_curve(model, x, y, args.batch_size), 1)
    print(f"\n{label}: clean accuracy {clean:.2%} on {x.shape[0]} MNIST test images")
    head = ("eps", "(a) naive", "(b) curve", "b - a", "(c) bisect", "c - a")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (6, 10, 10, 8, 11, 8), strict=True)))
    for e, a, b, c in zip(EPS, naive, ours, bis, strict=True):
        print(
            f"{e:>6.2f} {a:>10.2%} {b:>10.2%} {100 * (b - a):>+7.1f}p "
            f"{c:>11.2%} {100 * (c - a):>+7.1f}p"
        )
    ratio = t_ours / t_naive
    print(
        f"time: (a) {t_naive:.1f} s, (b) {t_ours:.1f} s = {ratio:.2f} of (a) "
        f"[(b) with health checks: {t_checks:.1f} s = {t_checks / t_naive:.2f} of (a)]"
    )
    print(f"backward passes: (a) {b_naive:,}  (b) {b_ours:,} = {b_ours / b_naive:.2f} of (a)")
    print(
        f"(c) bisection proposal: {t_bis:.1f} s = {t_bis / t_naive:.2f} of (a), "
        f"{b_bis:,} backward passes = {b_bis / b_naive:.2f} of (a)"
    )
    time_ok = ratio <= 1 / 3
    acc_ok = all(b <= a + 0.005 for a, b in zip(naive, ours, strict=True))
    print(f"targets: time <= 1/3: {'PASS' if time_ok else 'FAIL'}; "
          f"acc (b) <= (a) + 0.5p at every eps: {'PASS' if acc_ok else 'FAIL'}")  # fmt: skip
    return time_ok and acc_ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("robustbench_local").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir)
    x, y = (t[: args.n] for t in test.tensors)
    print(
        f"linf PGD-{STEPS} (rel. step 2.5/{STEPS}, random start) at eps {EPS}; models trained on "
        f"{min(args.train_n, len(train))} MNIST training images: 1 epoch standard, and FGSM-RS "
        f"fast AT (Wong et al. 2020, eps 0.3, alpha 0.375) for only {args.at_epochs} epochs "
        f"(a brief run, not the paper's 10 epochs on 60k); {args.threads} thread(s)"
    )
    models = train_models(train, args)
    with torch.no_grad():
        ok = [report(label, x, y, m, args) for label, m in models.items()]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
