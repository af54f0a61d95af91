"""Square and FAB against the reference AutoAttack (pyautoattack) and ART on MNIST.

The model is robustbench_local's "mnist_small_cnn" (Wong et al. 2020), plainly trained for one
epoch (Adam lr 1e-3, batch 100, seed 0) on ``--train-n`` MNIST training images. Every attack
runs on the same first ``--n`` MNIST test images in one batch, on the CPU, with the same
number of torch threads. The model is wrapped in a meter that counts the per-sample forward
and backward passes each library makes and the time spent inside the model's forward, so
"overhead" is (wall time - forward time) / forward time: what an attack spends on top of the
raw cost of its own queries.

Rows (all at paper / AutoAttack defaults unless a flag says otherwise):

- Square, linf and l2, ``--queries`` forward passes per sample for ours and for AutoAttack
  (its ``n_queries`` is set one lower, because it does not count its first query), and
  ``--art-queries`` iterations for ART (each ART iteration spends three passes on every
  sample still robust). Robust accuracy: fraction of images still correctly classified.
- FAB (untargeted, 100 steps, 1 restart), linf and l2: success rate on the clean-correct
  images and median norm of the perturbations found.
- FAB-T (9 targets, 100 steps) at a fixed eps, with ``eps`` given to both implementations
  (the cascade on survivors): robust accuracy.

Wall times are medians over ``--repeats`` runs (the first run is also timed: no warm-up is
needed on the CPU); ratios are ours / theirs measured in the same run.

Usage:
    python benchmarks/square_fab.py                 # the full run (n=500, 5000 queries)
    python benchmarks/square_fab.py --quick         # a smoke run (n=64, 300 queries, 1 repeat)

"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import robustbench_local as rbl
from benchmarks._common import default_data_dir

log = logging.getLogger("benchmarks.square_fab")
EPS = {"linf": 0.1, "l2": 1.5}
FAB_T_EPS = {"linf": 0.1, "l2": 1.5}
AA_NORM = {"linf": "Linf", "l2": "L2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="MNIST test images (500)")
    p.add_argument("--queries", type=int, default=5000, help="Square queries per sample (5000)")
    p.add_argument("--art-queries", type=int, default=1000, help="ART Square iterations (1000)")
    p.add_argument("--fab-steps", type=int, default=100, help="FAB iterations (100)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per attack (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--train-n", type=int, default=20000, help="training images (20000)")
    p.add_argument("--skip-art", action="store_true", help="no ART rows")
    p.add_argument("--quick", action="store_true", help="n=64, 300 queries, 20 FAB steps, 1 run")
    p.add_argument("--data-dir", default=None, help="MNIST mirror (default: env, ../shared)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.art_queries, args.fab_steps = 64, 300, 100, 20
        args.repeats, args.train_n = 1, 5000
    if min(args.n, args.queries, args.art_queries, args.fab_steps, args.repeats) < 1:
        p.error("--n, --queries, --art-queries, --fab-steps and --repeats must be positive")
    return args


class _CountBackward(torch.autograd.Function):
    """Identity whose backward counts the rows of each backward pass through the model."""

    @staticmethod
    def forward(ctx, x: Tensor, meter: Meter) -> Tensor:
        ctx.meter = meter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        ctx.meter.backward_rows += grad.shape[0]
        return grad, None


class Meter(nn.Module):
    """Wraps a model: counts forward/backward rows and the time spent in its forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.forward_rows = self.backward_rows = 0
        self.forward_time = 0.0

    def forward(self, x: Tensor) -> Tensor:
        self.forward_rows += x.shape[0]
        if x.requires_grad:
            x = _CountBackward.apply(x, self)
        start = time.perf_counter()
        out = self.model(x)
        self.forward_time += time.perf_counter() - start
        return out


@dataclass
class Run:
    """One library's runs of one attack: outputs of the last run, times of all."""

    x_adv: Tensor
    times: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    fwd: float = 0.0
    bwd: float = 0.0

    @property
    def time(self) -> float:
        return statistics.median(self.times)

    @property
    def overhead(self) -> float:
        return statistics.median(self.overheads)


def timed(meter: Meter, fn: Callable[[], Tensor], repeats: int, n: int) -> Run:
    """Run ``fn`` ``repeats`` times; per-sample passes and forward overhead of each run."""
    run = None
    for _ in range(repeats):
        meter.reset()
        start = time.perf_counter()
        x_adv = fn()
        wall = time.perf_counter() - start
        run = run or Run(x_adv)
        run.x_adv = x_adv
        run.times.append(wall)
        run.overheads.append((wall - meter.forward_time) / max(meter.forward_time, 1e-9))
        run.fwd, run.bwd = meter.forward_rows / n, meter.backward_rows / n
    assert run is not None
    return run


def train_model(train: torch.utils.data.TensorDataset, n: int) -> nn.Module:
    """Plain training, one epoch: Adam lr 1e-3, batch 100, seed 0."""
    torch.manual_seed(0)
    model = rbl.create_model("mnist_small_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = train.tensors
    x, y = x[:n], y[:n]
    gen = torch.Generator().manual_seed(0)
    model.train()
    for idx in torch.randperm(len(y), generator=gen).split(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def norms(x_adv: Tensor, x: Tensor, norm: str) -> Tensor:
    p = float("inf") if norm == "linf" else 2.0
    return (x_adv - x).flatten(1).norm(p=p, dim=1)


def square_rows(args, meter: Meter, x: Tensor, y: Tensor) -> list[list[str]]:
    from pyautoattack.square import SquareAttack

    rows = []
    for norm, eps in EPS.items():
        ours = attacks.create("square", norm=norm, n_queries=args.queries)
        mine = timed(meter, lambda a=ours, e=eps: a(meter, x, y, eps=e).x_adv, args.repeats, len(y))
        aa = SquareAttack(
            meter, norm=AA_NORM[norm], n_queries=args.queries - 1, eps=eps, p_init=0.8,
            n_restarts=1, seed=0, resc_schedule=False,
        )  # fmt: skip
        ref = timed(meter, lambda a=aa: a.perturb(x, y), args.repeats, len(y))
        row = [f"square {norm} eps {eps:g}", f"{args.queries}"]
        row += [f"{accuracy(meter.model, r.x_adv, y):.1%}" for r in (mine, ref)]
        row += [f"{r.time:.1f}" for r in (mine, ref)] + [f"{mine.time / ref.time:.2f}"]
        row += [f"{r.fwd:.0f}/{r.bwd:.0f}" for r in (mine, ref)]
        row += [f"{r.overhead:.0%}" for r in (mine, ref)]
        rows.append(row)
        if not args.skip_art:
            rows.append(art_square_row(args, meter, x, y, norm, eps))
    return rows


def art_square_row(args, meter: Meter, x: Tensor, y: Tensor, norm: str, eps: float) -> list[str]:
    import art.attacks.evasion as art_evasion
    import art.estimators.classification as art_classification

    clf = art_classification.PyTorchClassifier(
        model=meter, loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]), nb_classes=10,
        clip_values=(0.0, 1.0), device_type="cpu",
    )  # fmt: skip
    art = art_evasion.SquareAttack(
        clf, norm=np.inf if norm == "linf" else 2, max_iter=args.art_queries, eps=eps,
        p_init=0.8, nb_restarts=1, batch_size=len(y), verbose=False,
    )  # fmt: skip
    ours = attacks.create("square", norm=norm, n_queries=args.art_queries + 1)
    mine = timed(meter, lambda: ours(meter, x, y, eps=eps).x_adv, args.repeats, len(y))
    np.random.seed(0)
    ref = timed(
        meter, lambda: torch.as_tensor(art.generate(x.numpy(), y.numpy())), args.repeats, len(y)
    )
    row = [f"square {norm} eps {eps:g} vs ART", f"{args.art_queries} it"]
    row += [f"{accuracy(meter.model, r.x_adv, y):.1%}" for r in (mine, ref)]
    row += [f"{r.time:.1f}" for r in (mine, ref)] + [f"{mine.time / ref.time:.2f}"]
    row += [f"{r.fwd:.0f}/{r.bwd:.0f}" for r in (mine, ref)]
    return row + [f"{r.overhead:.0%}" for r in (mine, ref)]


def fab_rows(args, meter: Meter, x: Tensor, y: Tensor) -> list[list[str]]:
    from pyautoattack.fab_pt import FABAttack_PT

    clean = meter.model(x).argmax(1) == y
    rows = []
    for norm in EPS:
        ours = attacks.create("fab", norm=norm, steps=args.fab_steps)
        mine = timed(meter, lambda a=ours: a(meter, x, y).x_adv, args.repeats, len(y))
        aa = FABAttack_PT(
            meter, norm=AA_NORM[norm], n_restarts=1, n_iter=args.fab_steps, eps=1e10, seed=0
        )
        ref = timed(meter, lambda a=aa: a.perturb(x, y), args.repeats, len(y))
        stats = []
        for r in (mine, ref):
            with torch.no_grad():
                ok = (meter.model(r.x_adv).argmax(1) != y) & clean
            size = torch.where(ok, norms(r.x_adv, x, norm), torch.full_like(y, 10**9).float())
            stats.append((float(ok.sum() / clean.sum()), float(size[clean].median())))
        row = [f"fab {norm}", f"{args.fab_steps} steps"]
        row += [f"{s:.1%} / {m:.4f}" for s, m in stats]
        row += [f"{r.time:.1f}" for r in (mine, ref)] + [f"{mine.time / ref.time:.2f}"]
        row += [f"{r.fwd:.0f}/{r.bwd:.0f}" for r in (mine, ref)]
        rows.append(row)
    for norm, eps in FAB_T_EPS.items():
        ours = attacks.create("fab_t", norm=norm, steps=args.fab_steps, eps=eps)
        mine = timed(meter, lambda a=ours, e=eps: a(meter, x, y, eps=e).x_adv, args.repeats, len(y))
        aa = FABAttack_PT(
            meter, norm=AA_NORM[norm], n_restarts=1, n_iter=args.fab_steps, eps=eps, seed=0,
            targeted=True, n_target_classes=9,
        )  # fmt: skip
        ref = timed(meter, lambda a=aa: a.perturb(x, y), args.repeats, len(y))
        accs = []
        for r in (mine, ref):
            inside = norms(r.x_adv, x, norm) <= eps + 1e-6
            with torch.no_grad():
                fooled = (meter.model(r.x_adv).argmax(1) != y) & inside
            accs.append(float((~fooled & clean).float().mean()))
        row = [f"fab_t {norm} eps {eps:g}", f"{args.fab_steps} steps"]
        row += [f"{a:.1%}" for a in accs]
        row += [f"{r.time:.1f}" for r in (mine, ref)] + [f"{mine.time / ref.time:.2f}"]
        row += [f"{r.fwd:.0f}/{r.bwd:.0f}" for r in (mine, ref)]
        rows.append(row)
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    model = train_model(train, args.train_n)
    x, y = (t[: args.n].clone() for t in test.tensors)
    meter = Meter(model).eval()
    log.info("clean accuracy on %d test images: %.1f%%", args.n, 100 * accuracy(model, x, y))
    sq = square_rows(args, meter, x, y)
    print("\nSquare (robust accuracy, lower is stronger; passes = forward/backward per sample)")
    print(
        table(
            ["attack", "budget", "acc ours", "acc ref", "s ours", "s ref", "ratio",
             "passes ours", "passes ref", "overhead ours", "overhead ref"],
            sq,
        )
    )  # fmt: skip
    fab = fab_rows(args, meter, x, y)
    print("\nFAB (success on clean-correct / median norm; fab_t: robust accuracy at eps)")
    print(
        table(
            ["attack", "budget", "ours", "ref", "s ours", "s ref", "ratio",
             "passes ours", "passes ref"],
            fab,
        )
    )  # fmt: skip
    print(f"\nref = pyautoattack 0.2.0 (AutoAttack) or ART; {args.repeats} runs, medians")
    return 0


if __name__ == "__main__":
    sys.exit(main())
