"""Certified robustness by bound propagation and exact verification: sound, tight, what it costs.

Tables (one CPU thread unless --threads; all on MNIST test images):

1. Sound: on small MLPs and CNNs, standard-trained and IBP-trained, per eps: how many samples
   IBP and CROWN certify, how many the exact MILP (Tjeng et al. 2019; here with IBP big-M
   constants and no CROWN presolve, so it shares nothing with CROWN) proves robust, refutes
   with a counterexample or leaves undecided; every bound certificate must be MILP-robust
   (``IBP&cex`` and ``CROWN&cex`` count certified samples the MILP refutes: 0; ``CROWN&unk``
   those it left undecided within its time limit) and every counterexample must lie in the
   ball and change the class in a forward pass (``bad cex``: 0, over the whole grid).
   ``CROWN/MILP`` is the share of the MILP-robust samples CROWN certifies (target on the
   standard MLP at the smallest eps: >= 80%).
2. Gap: the certified rows beside the empirical worst case of ``rbl.robustness_curve`` (PGD
   plus the default reference suite), per eps; the true robust accuracy lies between the best
   certified row and the worst case (the MILP's exact count where it decided everything).
   ``violated`` counts samples certified by a bound method and broken by an attack: 0.
3. Cost: forward-pass units per image and eps of IBP and CROWN (IBP: its two interval passes
   plus the margin folded into the last layer; CROWN adds its backward passes in forward-pass
   units: rows times the share of the network's multiply-adds they traverse; the certifiers add
   one clean forward pass per image for the whole grid), and milliseconds per image and eps
   beside one forward pass.
4. MILP: seconds per (sample, eps) by outcome (median, 90th percentile, max).
5. The ``ibp`` recipe on MNIST (``mnist_small_cnn``, the defense's defaults: train eps 0.4, Adam
   1e-3, batch 100, ramps and learning-rate decays in Gowal et al.'s proportions; --recipe-epochs
   epochs; and the same at train eps 0.2, their protocol for an evaluation at 0.1): clean
   accuracy and IBP-verified accuracy at eps 0.1 (target >= 90%) and 0.3 on the test images,
   beside Gowal et al.'s published verified accuracies (97.77% at 0.1 and 91.95% at 0.3, large
   model, 100 epochs, trained at 0.2 and 0.4).

Trained models are cached under --cache-dir (default ~/.cache/robustbench_local/bench/certify).

Usage:
    python benchmarks/certify.py [--quick] [--part sound,gap,cost,milp,recipe] [--n 100]
        [--recipe-epochs 20] [--time-limit 60] [--threads 1]

"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir
from defenses.bounds import BoundedModel
from defenses.storage import atomic_torch_save
from robustbench_local.certify import CertifiedCurve
from robustbench_local.certify.milp import COUNTEREXAMPLE, ROBUST, UNKNOWN
from robustbench_local.models.zoo import Normalize

logger = logging.getLogger("certify")

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


# --------------------------------------------------------------------------- models


def mnist_mlp() -> nn.Module:
    """784-50-50-10 with the normalisation inside (the size of ERAN's small MNIST MLPs)."""
    return nn.Sequential(
        Normalize(MNIST_MEAN, MNIST_STD), nn.Flatten(), nn.Linear(784, 50), nn.ReLU(),
        nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 10),
    )  # fmt: skip


def mnist_cnn() -> nn.Module:
    """Two strided convolutions (8 and 16 channels) and a 50-unit layer."""
    return nn.Sequential(
        Normalize(MNIST_MEAN, MNIST_STD), nn.Conv2d(1, 8, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 7 * 7, 50), nn.ReLU(), nn.Linear(50, 10),
    )  # fmt: skip


@dataclass(frozen=True)
class Spec:
    """A benchmark model: architecture, training defense and its settings, eps grid."""

    build: Callable[[], nn.Module]
    defense: str
    settings: dict[str, Any]
    eps: list[float]


def specs(quick: bool) -> dict[str, Spec]:
    """The four small models of tables 1-4."""
    epochs = 1 if quick else 3
    std = {"epochs": epochs, "batch_size": 128, "lr": 1e-3}
    # a constant learning rate: the recipe's decays (table 5) assume long training
    ibp = {"epochs": epochs + 1, "eps": 0.1, "batch_size": 100, "lr": 1e-3,
           "schedule": "constant"}  # fmt: skip
    return {
        "mlp standard": Spec(mnist_mlp, "standard", std, [0.005, 0.01, 0.02, 0.03]),
        "cnn standard": Spec(mnist_cnn, "standard", std, [0.005, 0.01, 0.02, 0.03]),
        "mlp ibp": Spec(mnist_mlp, "ibp", ibp, [0.02, 0.05, 0.1]),
        "cnn ibp": Spec(mnist_cnn, "ibp", ibp, [0.02, 0.05, 0.1]),
    }


def trained(name: str, spec: Spec, train: TensorDataset, cache: Path) -> nn.Module:
    """Train ``spec`` on ``train`` (or load it from the cache)."""
    return trained_timed(name, spec, train, cache)[0]


def trained_timed(
    name: str, spec: Spec, train: TensorDataset, cache: Path
) -> tuple[nn.Module, float]:
    """The trained model and its training time in seconds (both cached)."""
    key = json.dumps([name, spec.defense, spec.settings, len(train)], sort_keys=True)
    path = cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    torch.manual_seed(0)
    model = spec.build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        meta = path.with_suffix(".json")
        seconds = json.loads(meta.read_text())["seconds"] if meta.exists() else float("nan")
        return model.eval(), seconds
    start = time.perf_counter()
    defenses.create(spec.defense, progress=False, **spec.settings).fit(model, train)
    seconds = time.perf_counter() - start
    logger.info("trained %s in %.0f s", name, seconds)
    atomic_torch_save(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({"seconds": seconds}))
    return model.eval(), seconds


# --------------------------------------------------------------------------- table 1


@dataclass
class Certified:
    """The three certifications of one model."""

    ibp: CertifiedCurve
    crown: CertifiedCurve
    milp: CertifiedCurve


def certify_all(model: nn.Module, data, eps: list[float], n: int, limit: float) -> Certified:
    """IBP, CROWN and the independent MILP on the same ``n`` test images."""
    common = {"n_examples": n, "batch_size": n, "progress": False}
    ibp = rbl.certify(model, data, "ibp", eps, **common)
    crown = rbl.certify(model, data, "crown", eps, **common)
    milp = rbl.certify(
        model, data, "milp", eps, time_limit=limit, big_m="ibp", presolve=False, **common
    )
    return Certified(ibp, crown, milp)


def bad_counterexamples(model: nn.Module, data, milp: CertifiedCurve) -> int:
    """Counterexamples outside the ball or box, or that keep the class."""
    x, y = data.tensors[0][milp.indices], data.tensors[1][milp.indices]
    bad = 0
    outcome = milp.extra["milp_outcome"]
    for k, eps in enumerate(milp.eps.tolist()):
        for i in (outcome[k] == COUNTEREXAMPLE).nonzero().flatten().tolist():
            p = milp.extra["counterexample"][k, :, i].reshape(x[i].shape)
            inside = float((p - x[i]).abs().max()) <= eps + 1e-6 and 0 <= p.min() <= p.max() <= 1
            with torch.no_grad():
                changed = int(model(p.unsqueeze(0)).argmax()) != int(y[i])
            bad += not (inside and changed)
    return bad


def sound_rows(name: str, model: nn.Module, data, c: Certified) -> list[list[str]]:
    """Table 1 rows of one model."""
    rows = []
    outcome = c.milp.extra["milp_outcome"]
    bad = bad_counterexamples(model, data, c.milp)
    for k, eps in enumerate(c.milp.eps.tolist()):
        robust, cex = outcome[k] == ROBUST, outcome[k] == COUNTEREXAMPLE
        unknown = outcome[k] == UNKNOWN
        ibp, crown = c.ibp.certified[k], c.crown.certified[k]
        share = int((crown & robust).sum()) / max(1, int(robust.sum()))
        rows.append([
            name, f"{eps:g}", f"{c.milp.clean_accuracy:.0%}", str(int(ibp.sum())),
            str(int(crown.sum())), str(int(robust.sum())), str(int(cex.sum())),
            str(int(unknown.sum())), str(int((ibp & cex).sum())), str(int((crown & cex).sum())),
            str(int((crown & unknown).sum())), str(bad) if k == 0 else "", f"{share:.0%}",
        ])  # fmt: skip
    return rows


SOUND_HEAD = ["model", "eps", "clean", "IBP", "CROWN", "MILP rob", "MILP cex", "unknown",
              "IBP&cex", "CROWN&cex", "CROWN&unk", "bad cex", "CROWN/MILP"]  # fmt: skip


# --------------------------------------------------------------------------- table 2


def gap_rows(name: str, model: nn.Module, data, c: Certified, n: int) -> list[list[str]]:
    """Table 2 rows: certified rows, MILP, empirical worst case, gap, violations."""
    eps = c.crown.eps.tolist()
    curve = rbl.robustness_curve(
        model, data, ["pgd"], eps, n_examples=n, batch_size=n, progress=False
    )
    if not torch.equal(curve.indices, c.crown.indices):
        raise RuntimeError("the attack curve and the certificates evaluated other samples")
    worst = curve.worst_case_robust()
    rows = []
    for k, e in enumerate(eps):
        best = c.crown.certified[k] | c.ibp.certified[k]
        decided = not bool((c.milp.extra["milp_outcome"][k] == UNKNOWN).any())
        violated = int((best & ~worst[k]).sum())
        missed = int((worst[k] & (c.milp.extra["milp_outcome"][k] == COUNTEREXAMPLE)).sum())
        gap = float(worst[k].float().mean() - best.float().mean())
        rows.append([
            name, f"{e:g}", f"{float(c.ibp.accuracy[k]):.1%}", f"{float(c.crown.accuracy[k]):.1%}",
            f"{float(c.milp.accuracy[k]):.1%}" + ("" if decided else " (>=)"),
            f"{float(worst[k].float().mean()):.1%}", f"{gap:+.1%}", str(violated), str(missed),
        ])  # fmt: skip
    return rows


GAP_HEAD = ["model", "eps", "IBP", "CROWN", "MILP exact", "attacks", "attacks-cert", "violated",
            "attack missed"]  # fmt: skip


# --------------------------------------------------------------------------- tables 3 and 4


def cost_rows(name: str, model: nn.Module, data, eps: float, n: int) -> list[list[str]]:
    """Table 3 rows: forward-pass units and milliseconds per image and eps."""
    x, y = data.tensors[0][:n], data.tensors[1][:n]
    bounded = BoundedModel(model)
    forward = _median_seconds(lambda: model(x)) / n
    rows = []
    for method in ("ibp", "crown"):
        seconds = _median_seconds(lambda m=method: bounded.margins(x, y, eps, method=m)) / n
        rows.append([
            name, method, f"{eps:g}", f"{bounded.units:.2f}", f"{seconds * 1e3:.3f}",
            f"{forward * 1e3:.4f}", f"{seconds / forward:.0f}x",
        ])  # fmt: skip
    return rows


COST_HEAD = ["model", "method", "eps", "fwd units", "ms/img", "fwd ms/img", "vs fwd"]


def _median_seconds(fn: Callable[[], Any], repeats: int = 3) -> float:
    times = []
    with torch.no_grad():
        fn()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def milp_rows(name: str, milp: CertifiedCurve) -> list[list[str]]:
    """Table 4 rows: seconds per (sample, eps) by outcome."""
    seconds, outcome = milp.extra["milp_time"], milp.extra["milp_outcome"]
    checked = milp.clean_correct.unsqueeze(0).expand_as(outcome)
    rows = []
    for label, code in (("robust", ROBUST), ("counterexample", COUNTEREXAMPLE),
                        ("unknown", UNKNOWN)):  # fmt: skip
        t = sorted(seconds[(outcome == code) & checked].tolist())
        if not t:
            continue
        p90 = t[min(len(t) - 1, int(0.9 * len(t)))]
        rows.append([name, label, str(len(t)), f"{statistics.median(t):.2f}", f"{p90:.2f}",
                     f"{t[-1]:.2f}"])  # fmt: skip
    return rows


MILP_HEAD = ["model", "outcome", "pairs", "median s", "p90 s", "max s"]


# --------------------------------------------------------------------------- table 5


PUBLISHED = {0.1: "97.77% (at 0.2)", 0.3: "91.95% (at 0.4)"}
"""Gowal et al.'s verified accuracy (large model, 100 epochs) and the eps they trained at."""


def recipe_rows(train, test, epochs: int, n_test: int | None, cache: Path) -> list[list[str]]:
    """Table 5: the ibp defense's recipe on mnist_small_cnn, at its default training eps 0.4
    (evaluated at 0.1 and 0.3) and at 0.2 (evaluated at 0.1, as Gowal et al. do for 0.1)."""
    rows = []
    for train_eps, grid in ((0.4, [0.1, 0.3]), (0.2, [0.1])):
        settings = {"epochs": epochs} if train_eps == 0.4 else {"epochs": epochs, "eps": train_eps}
        spec = Spec(lambda: rbl.create_model("mnist_small_cnn"), "ibp", settings, [])
        model, seconds = trained_timed("recipe", spec, train, cache)
        curve = rbl.certify(
            model, test, "ibp", grid, n_examples=n_test, batch_size=1000, progress=False
        )
        for k, eps in enumerate(curve.eps.tolist()):
            rows.append([
                "mnist_small_cnn", f"{train_eps:g}", str(epochs), f"{seconds / 60:.0f}",
                str(curve.n_examples), f"{curve.clean_accuracy:.2%}", f"{eps:g}",
                f"{float(curve.accuracy[k]):.2%}", PUBLISHED[eps],
            ])  # fmt: skip
    return rows


RECIPE_HEAD = ["model", "train eps", "epochs", "train min", "images", "clean", "eps",
               "IBP verified", "Gowal et al."]  # fmt: skip


# --------------------------------------------------------------------------- main


def table(title: str, head: list[str], rows: list[list[str]]) -> None:
    """Print an aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]  # fmt: skip
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images, epochs and seconds")
    p.add_argument("--part", default="sound,gap,cost,milp,recipe")
    p.add_argument("--n", type=int, default=None, help="test images of tables 1-4")
    p.add_argument("--recipe-epochs", type=int, default=None)
    p.add_argument("--recipe-images", type=int, default=None, help="default: all 10,000")
    p.add_argument("--time-limit", type=float, default=None, help="MILP seconds per problem")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "robustbench_local" / "bench" / "certify",
    )
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    parts = set(args.part.split(","))
    n = args.n or (30 if args.quick else 100)
    limit = args.time_limit or (20.0 if args.quick else 60.0)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    train, test = rbl.load_dataset("mnist", default_data_dir())
    if args.quick:
        train = TensorDataset(train.tensors[0][:12000], train.tensors[1][:12000])
    if parts & {"sound", "gap", "cost", "milp"}:
        small_models(args, train, test, n, limit, parts)
    if "recipe" in parts:
        epochs = args.recipe_epochs or (2 if args.quick else 20)
        images = args.recipe_images or (1000 if args.quick else None)
        table("5. the ibp recipe on MNIST", RECIPE_HEAD,
              recipe_rows(train, test, epochs, images, args.cache_dir))  # fmt: skip


def small_models(args, train, test, n: int, limit: float, parts: set[str]) -> dict:
    """Tables 1-4 on the four small models."""
    sound, gap, cost, milp = [], [], [], []
    done = {}
    for name, spec in specs(args.quick).items():
        model = trained(name, spec, train, args.cache_dir)
        logger.info("certifying %s on %d images", name, n)
        c = certify_all(model, test, spec.eps, n, limit)
        done[name] = c
        sound += sound_rows(name, model, test, c)
        if "gap" in parts:
            gap += gap_rows(name, model, test, c, n)
        cost += cost_rows(name, model, test, spec.eps[1], min(n, 50))
        milp += milp_rows(name, c.milp)
    if "sound" in parts:
        table("1. sound: IBP and CROWN certificates against the exact MILP", SOUND_HEAD, sound)
    if "gap" in parts:
        table("2. gap: certified accuracy beside the attacks' worst case", GAP_HEAD, gap)
    if "cost" in parts:
        table("3. cost per image and eps", COST_HEAD, cost)
    if "milp" in parts:
        table("4. MILP seconds per (sample, eps)", MILP_HEAD, milp)
    return done


if __name__ == "__main__":
    main()
