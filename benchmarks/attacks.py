"""Attack speed and strength against ART: PGD-40 (linf) and Carlini-Wagner L2 on MNIST.

The model is robustbench_local's "mnist_small_cnn" (Wong et al. 2020), trained for
``--epochs`` epochs of plain Adam (lr 1e-3, batch 100, seed 0) on the MNIST training set (or
loaded from ``--checkpoint`` if that file exists; it is written there otherwise). Both libraries
attack the same first ``--n`` MNIST test images (``--cw-n`` for CW, because ART's CW is slow) in
one batch, on the CPU with the same number of torch threads.

Columns: median wall time over ``--repeats`` runs (after one untimed warm-up run, except for
ART's CW) for ours and ART; "raw" is the median cost of the calls our attack made, replayed as
plain forward(+backward) passes of the model at the same batch sizes, i.e. what any
implementation with the same calls must spend. For PGD, ours and the replay are timed in turns
and "ours/raw" is the median of the per-turn ratios (wall and CPU time; the CPU ratio is the
one a shared machine does not blur); the same turns run a loop of as many passes at one fixed
full batch, to tell whether the shrinking batch of early stop costs anything per pass by
itself. Robust accuracy (PGD) is the fraction of the images still correctly classified; for CW
the success rate and the median L2 norm of the successful perturbations are given. Targets per
row are printed with the verdict.

A second PGD row at eps 0.1 is added because at eps 0.3 the plainly trained model has no
robust accuracy left under either attack, which makes the accuracy comparison vacuous.

Usage:
    python benchmarks/attacks.py [--n 1000] [--cw-n 200] [--repeats 3] [--threads 1]

"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import robustbench_local as rbl
from benchmarks._common import default_data_dir

log = logging.getLogger("benchmarks.attacks")
EPS, STEPS, STEP_SIZE = 0.3, 40, 0.01
CW = {"binary_search_steps": 9, "max_iter": 100, "learning_rate": 0.01, "initial_const": 0.01}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="MNIST test images for PGD (1000)")
    p.add_argument("--cw-n", type=int, default=200, help="MNIST test images for CW (200)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per attack (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for both (1)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs (1)")
    p.add_argument("--checkpoint", default=None, help="load the model here, or save it here")
    p.add_argument("--skip-cw", action="store_true", help="only the PGD row")
    p.add_argument(
        "--data-dir", default=None, help="MNIST mirror (default: env, ../shared/datasets)"
    )
    args = p.parse_args(argv)
    if min(args.n, args.cw_n, args.repeats, args.threads, args.epochs) < 1:
        p.error("--n, --cw-n, --repeats, --threads and --epochs must be positive")
    return args


def train_model(train: torch.utils.data.TensorDataset, epochs: int) -> nn.Module:
    """Plain training: Adam lr 1e-3, batch 100, seed 0."""
    torch.manual_seed(0)
    model = rbl.create_model("mnist_small_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = train.tensors
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def get_model(args: argparse.Namespace, train: torch.utils.data.TensorDataset) -> nn.Module:
    if args.checkpoint and Path(args.checkpoint).exists():
        return rbl.load_checkpoint(args.checkpoint).eval()
    model = train_model(train, args.epochs)
    if args.checkpoint:
        rbl.save_checkpoint(model, args.checkpoint, arch="mnist_small_cnn")
    return model


class Counted(nn.Module):
    """Counts per-sample forward passes of the model (to report ART's pass counts)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_forward = 0

    def forward(self, x: Tensor) -> Tensor:
        self.n_forward += x.shape[0]
        return self.model(x)


def art_classifier(model: nn.Module):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )


def timed(fn: Callable[[], object], repeats: int, warmup: bool = True) -> tuple[float, object]:
    """Median wall time over ``repeats`` calls (after one untimed call), and the first output."""
    if warmup:
        fn()
    times, first = [], None
    for i in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        first = out if i == 0 else first
    return statistics.median(times), first


class Tracer(nn.Module):
    """Records every call the attack makes: (batch size, whether a backward follows)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append((x.shape[0], x.requires_grad))
        return self.model(x)


def trace(model: nn.Module, attack: attacks.Attack, x: Tensor, **kw) -> list[tuple[int, bool]]:
    """The calls one run of ``attack`` makes: (batch size, whether a backward follows)."""
    tracer = Tracer(model)
    attack(tracer, x, **kw)
    return tracer.calls


def replayer(model: nn.Module, x: Tensor, calls: list[tuple[int, bool]]) -> Callable[[], None]:
    """Plain forward (or forward plus input-gradient backward) passes on the first rows of x."""

    def replay() -> None:
        for n, backward in calls:
            if backward:
                xg = x[:n].clone().requires_grad_(True)
                torch.autograd.grad(model(xg).sum(), xg)
            else:
                with torch.no_grad():
                    model(x[:n])

    return replay


def raw_cost(model: nn.Module, x: Tensor, attack: attacks.Attack, repeats: int, **kw) -> float:
    """Seconds of the attack's own passes replayed bare: same batch sizes, same fwd(+bwd).

    The attack runs once on a :class:`Tracer`; every recorded call is then replayed on the
    first rows of ``x`` as a plain forward, or forward plus input-gradient backward.
    """
    replay = replayer(model, x, trace(model, attack, x, **kw))
    with attacks.model_guard(model):  # parameters frozen, as during the attack
        return timed(replay, repeats)[0]


@dataclass
class Paired:
    """The attack and its raw replay timed in turns: medians and medians of per-turn ratios."""

    wall: float
    raw_wall: float
    ratio: float
    cpu_ratio: float
    fixed_ratio: float  # per-sample pass cost: shrinking batches / one fixed full batch


def paired_raw(model: nn.Module, x: Tensor, attack: attacks.Attack, repeats: int, **kw) -> Paired:
    """Time ``attack`` and the replay of its calls alternately (wall and CPU time).

    Timing them in turns, and taking each turn's ratio, cancels most of the drift of a shared
    machine. A third loop runs the same number of per-sample forward+backward passes at one
    fixed batch (the full one): its per-sample cost against the replay's says whether the
    shrinking batch of early stop (a new shape at every step) costs anything by itself.
    """
    calls = trace(model, attack, x, **kw)
    n = x.shape[0]
    fixed = [(n, True)] * max(1, round(sum(k for k, b in calls if b) / n))
    fixed += [(n, False)] * max(0, round(sum(k for k, b in calls if not b) / n))
    ways = {
        "ours": lambda: attack(model, x, **kw),
        "raw": replayer(model, x, calls),
        "fixed": replayer(model, x, fixed),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in ways}
    for turn in range(repeats + 1):  # the first turn warms up
        for name, fn in ways.items():
            with attacks.model_guard(model):  # parameters frozen, as during the attack
                start, cpu = time.perf_counter(), time.process_time()
                fn()
                elapsed = (time.perf_counter() - start, time.process_time() - cpu)
            if turn:
                times[name].append(elapsed)

    def med_ratio(a: str, b: str, i: int) -> float:
        return statistics.median(p[i] / q[i] for p, q in zip(times[a], times[b], strict=True))

    passes = sum(k * (1 + b) for k, b in calls) / sum(k * (1 + b) for k, b in fixed)
    return Paired(
        statistics.median(t[0] for t in times["ours"]),
        statistics.median(t[0] for t in times["raw"]),
        med_ratio("ours", "raw", 0),
        med_ratio("ours", "raw", 1),
        med_ratio("raw", "fixed", 1) / passes,
    )


@dataclass
class Row:
    name: str
    ours_time: float
    art_time: float
    raw_time: float
    ours_metric: str
    art_metric: str
    passes: str
    verdict: str


def targets(*checks: tuple[str, bool]) -> str:
    """``"label: met; label: MISSED"`` for each (label, met) target."""
    return "; ".join(f"{label}: {'met' if met else 'MISSED'}" for label, met in checks)


def pgd_row(model: nn.Module, x: Tensor, y: Tensor, repeats: int, eps: float = EPS) -> Row:
    from art.attacks.evasion import ProjectedGradientDescent

    log.info("PGD-%d eps %s on %d images", STEPS, eps, len(y))
    ours = attacks.create("pgd", norm="linf", steps=STEPS, step_size=STEP_SIZE)
    res = ours(model, x, y, eps=eps)
    pair = paired_raw(model, x, ours, repeats, y=y, eps=eps)
    t_ours = pair.wall
    counted = Counted(model)
    art = ProjectedGradientDescent(
        art_classifier(counted),
        norm=np.inf,
        eps=eps,
        eps_step=STEP_SIZE,
        max_iter=STEPS,
        num_random_init=1,
        batch_size=x.shape[0],
        verbose=False,
    )
    xn, yn = x.numpy(), y.numpy()
    np.random.seed(0)
    t_art, x_art = timed(lambda: art.generate(xn, yn), repeats)
    art_fwd = counted.n_forward // (repeats + 1)
    with torch.no_grad():
        art_acc = float((model(torch.as_tensor(x_art)).argmax(1) == y).float().mean())
    acc = float(res.robust_accuracy)
    verdict = targets(
        (f"time {pair.ratio:.3f}x raw <= 1.05x", pair.ratio <= 1.05),
        (f"cpu {pair.cpu_ratio:.3f}x raw <= 1.05x", pair.cpu_ratio <= 1.05),
        (f"time {t_ours / t_art:.2f}x ART <= 0.8x", t_ours <= 0.8 * t_art),
        ("robust acc <= ART + 0.5 pt", acc <= art_acc + 0.005),
    )
    return Row(
        f"PGD-{STEPS} linf eps {eps} (n={len(y)})",
        t_ours,
        t_art,
        pair.raw_wall,
        f"robust acc {acc:.3f}",
        f"robust acc {art_acc:.3f}",
        f"passes/img: ours {res.n_backward / len(y):.1f} fwd+bwd + "
        f"{(res.n_forward - res.n_backward) / len(y):.1f} fwd (early stop), "
        f"ART {art_fwd / len(y):.1f} fwd; ours/raw: wall {pair.ratio:.3f}, cpu "
        f"{pair.cpu_ratio:.3f} (medians of paired turns); per-sample pass cost at the "
        f"shrinking batches / at a fixed full batch: {pair.fixed_ratio:.3f}",
        verdict,
    )


def cw_row(model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> Row:
    from art.attacks.evasion import CarliniL2Method

    ours = attacks.create(
        "cw_l2",
        binary_search_steps=CW["binary_search_steps"],
        steps=CW["max_iter"],
        learning_rate=CW["learning_rate"],
        initial_const=CW["initial_const"],
    )
    t_ours, res = timed(lambda: ours(model, x, y), repeats)
    log.info("CW: ours done in %.1f s; running ART's CarliniL2Method", t_ours)
    counted = Counted(model)
    art = CarliniL2Method(art_classifier(counted), batch_size=x.shape[0], verbose=False, **CW)
    xn, yn = x.numpy(), y.numpy()
    t_art, x_art = timed(lambda: art.generate(xn, yn), repeats, warmup=False)  # slow
    art_fwd = counted.n_forward // repeats
    x_art_t = torch.as_tensor(x_art)
    with torch.no_grad():
        art_ok = model(x_art_t).argmax(1) != y
    art_l2 = (x_art_t - x).flatten(1).norm(dim=1)[art_ok]
    ok_ours = res.norms.isfinite()
    rate, art_rate = float(ok_ours.float().mean()), float(art_ok.float().mean())
    med, art_med = float(res.norms[ok_ours].median()), float(art_l2.median())
    raw = raw_cost(model, x, ours, repeats, y=y)
    verdict = targets(
        ("success >= ART", rate >= art_rate),
        ("median L2 <= ART", med <= art_med),
        (f"time {t_ours / t_art:.3f}x ART <= 0.1x", t_ours <= 0.1 * t_art),
    )
    return Row(
        f"CW-L2 9x100 lr .01 c0 .01 (n={len(y)})",
        t_ours,
        t_art,
        raw,
        f"success {rate:.3f}, median L2 {med:.3f}",
        f"success {art_rate:.3f}, median L2 {art_med:.3f}",
        f"passes/img: ours {res.n_backward / len(y):.0f} fwd+bwd + "
        f"{(res.n_forward - res.n_backward) / len(y):.0f} fwd, ART {art_fwd / len(y):.0f} fwd",
        verdict,
    )


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nmnist_small_cnn ({args.epochs} epoch Adam), CPU, {args.threads} torch thread(s), "
        f"torch {torch.__version__}, median of {args.repeats} runs; CW on the first "
        f"{args.cw_n} images only (ART's CW is slow). Timings are noisy on a shared machine."
    )
    head = ("attack", "ours s", "ART s", "raw s", "ours/raw", "ours/ART", "ours", "ART")
    lines = [
        (
            r.name,
            f"{r.ours_time:.2f}",
            f"{r.art_time:.2f}",
            f"{r.raw_time:.2f}",
            f"{r.ours_time / r.raw_time:.2f}",
            f"{r.ours_time / r.art_time:.3f}",
            r.ours_metric,
            r.art_metric,
        )
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    for line in (head, *lines):
        print("  ".join(f"{c:<{w}}" for c, w in zip(line, widths, strict=True)))
    for r in rows:
        print(f"{r.name}: {r.passes}\n    targets: {r.verdict}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("art").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    model = get_model(args, train)
    x, y = (t[: args.n].contiguous() for t in test.tensors)
    rows = [pgd_row(model, x, y, args.repeats, eps) for eps in (EPS, 0.1)]
    if not args.skip_cw:
        rows.append(cw_row(model, x[: args.cw_n], y[: args.cw_n], args.repeats))
    print_table(rows, args)


if __name__ == "__main__":
    main()
