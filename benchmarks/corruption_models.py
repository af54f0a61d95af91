"""MNIST-C accuracy of a standard, a fast-AT and an AugMix CNN: both robustness axes at once.

Three ``mnist_small_cnn`` models are trained on MNIST with the same data, seed and epochs:
standard training, FGSM fast adversarial training (``fgsm_at``, eps 0.3, alpha 0.375) and
AugMix (``augmix``, the paper's defaults). Each is evaluated with ``rbl.corruption_curve`` on
the MNIST-C corruptions (generated on the fly; by default at each corruption's benchmark
setting, the single level MNIST-C uses) and with ``rbl.robustness_curve`` (PGD, the reference
suite at every eps) at linf 0.1 and 0.3. The table has one row per corruption with each model's
accuracy and the sign of (fast-AT - standard) and (AugMix - standard): ``+``/``-`` when the
paired difference exceeds two standard errors (the same images and corruption draws for every
model), ``~`` otherwise; then the mean corruption accuracy, the mCE against the standard model,
the clean accuracy and the adversarial accuracy.

Trained models are cached under ``--cache`` (default
``~/.cache/robustbench_local/bench/corruption_models``), keyed by the recipe, so a rerun only
evaluates.

Usage:
    python benchmarks/corruption_models.py                 # 5 epochs, 10k MNIST-C, 500 attacked
    python benchmarks/corruption_models.py --quick         # 2 epochs on 10k images, 1000 / 100
    python benchmarks/corruption_models.py --severities 1,2,3,4,5 [--epochs N] [--n-eval N]
        [--n-adv N] [--threads N] [--cache DIR] [--data-dir DIR] [--out results.json]

References:
    Mu & Gilmer, "MNIST-C: A Robustness Benchmark for Computer Vision", 2019.
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Hendrycks et al., "AugMix: A Simple Data Processing Method to Improve Robustness and
    Uncertainty", ICLR 2020.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir
from defenses.storage import atomic_write_json
from robustbench_local.corruptions.curve import CorruptionCurve, severity_label

ARCH = "mnist_small_cnn"
CACHE = Path.home() / ".cache" / "robustbench_local" / "bench" / "corruption_models"
DEFENSES: dict[str, dict[str, Any]] = {
    "standard": {},
    "fgsm_at": {"eps": 0.3, "alpha": 0.375},
    "augmix": {},
}
ADV_EPS = (0.1, 0.3)
LABEL = 18  # width of the row labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--n-train", type=int, default=60000, help="first N MNIST training images")
    p.add_argument("--n-eval", type=int, default=10000, help="MNIST-C test images")
    p.add_argument("--n-adv", type=int, default=500, help="test images attacked")
    p.add_argument("--severities", default="bench", help="'bench' or e.g. 1,2,3,4,5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    p.add_argument("--quick", action="store_true", help="2 epochs on 10k, 1000 eval, 100 adv")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.n_train, args.n_eval, args.n_adv = 2, 10000, 1000, 100
    return args


def parse_severities(text: str) -> tuple[int | None, ...]:
    """``"bench"`` -> ``(None,)``; ``"1,3"`` -> ``(1, 3)``."""
    return tuple(None if s == "bench" else int(s) for s in text.split(","))


def train_model(name: str, train: TensorDataset, args: argparse.Namespace) -> torch.nn.Module:
    """Train ``name`` on ``train`` (or load it from the cache)."""
    settings = {**DEFENSES[name], "epochs": args.epochs, "seed": args.seed}
    doc = {"defense": name, "settings": settings, "arch": ARCH, "n_train": len(train),
           "torch": str(torch.__version__)}  # fmt: skip
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    path = args.cache / f"{name}_{key}.pt"
    if path.exists():
        logging.info("%s: cached at %s", name, path)
        return rbl.load_checkpoint(path)
    torch.manual_seed(args.seed)
    model = rbl.create_model(ARCH)
    start = time.perf_counter()
    model = defenses.create(name, progress=False, **settings).fit(model, train)
    logging.info("%s: trained in %.0f s", name, time.perf_counter() - start)
    rbl.save_checkpoint(model, path, meta={**doc, "train_time_s": time.perf_counter() - start})
    return model.eval()


def evaluate(model: torch.nn.Module, test: TensorDataset, args: argparse.Namespace) -> dict:
    """The model's corruption curve, its adversarial worst case, and what each took."""
    start = time.perf_counter()
    curve = rbl.corruption_curve(
        model, test, "auto", parse_severities(args.severities), n_examples=args.n_eval,
        batch_size=args.batch_size, seed=args.seed, progress=False,
    )  # fmt: skip
    corruption_time = time.perf_counter() - start
    start = time.perf_counter()
    adv = rbl.robustness_curve(
        model, test, ["pgd"], list(ADV_EPS), n_examples=args.n_adv, batch_size=args.batch_size,
        seed=args.seed, reference="all", progress=False,
    )  # fmt: skip
    return {
        "curve": curve,
        "adversarial": dict(zip(ADV_EPS, adv.worst_case().tolist(), strict=True)),
        "times": {"corruptions_s": corruption_time, "adversarial_s": time.perf_counter() - start},
    }


def paired_sign(a: torch.Tensor, b: torch.Tensor) -> str:
    """``+``/``-`` when mean(a) - mean(b) exceeds two paired standard errors, else ``~``.

    ``a`` and ``b`` are per-sample correctness on the same images and corruption draws.
    """
    n = a.numel()
    diff = (a.double() - b.double()).flatten()
    se = float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    d = float(diff.mean())
    return "~" if abs(d) <= 2 * se else ("+" if d > 0 else "-")


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """One row per corruption: accuracies and signs vs standard; then summaries."""
    curves: dict[str, CorruptionCurve] = {k: r["curve"] for k, r in results.items()}
    std = curves["standard"]
    names = list(curves)
    others = [k for k in names if k != "standard"]
    sev = ",".join(severity_label(s) for s in std.severities)
    head = f"{'corruption':<{LABEL}}" + "".join(f"{k:>10}" for k in names)
    head += "".join(f"{'sign ' + k:>14}" for k in others)
    lines = [f"MNIST-C accuracy, {std.n_examples} test images, severity {sev}", head]
    for c, corr in enumerate(std.corruptions):
        accs = "".join(f"{float(curves[k].correct[c].double().mean()):>10.2%}" for k in names)
        signs = "".join(f"{paired_sign(curves[k].correct[c], std.correct[c]):>14}" for k in others)
        lines.append(f"{corr:<{LABEL}}{accs}{signs}")
    summary = {
        "mean corr.": {k: f"{c.mean_accuracy:.2%}" for k, c in curves.items()},
        "mCE vs std": {k: f"{c.mce(std):.3f}" for k, c in curves.items()},
        "clean": {k: f"{c.clean_accuracy:.2%}" for k, c in curves.items()},
        **{
            f"linf {e:g} (n={args.n_adv})": {
                k: f"{r['adversarial'][e]:.2%}" for k, r in results.items()
            }
            for e in ADV_EPS
        },
    }
    mean_signs = "".join(f"{paired_sign(curves[k].correct, std.correct):>14}" for k in others)
    for label, row in summary.items():
        cells = "".join(f"{row[k]:>10}" for k in names)
        lines.append(f"{label:<{LABEL}}{cells}{mean_signs if label == 'mean corr.' else ''}")
    return "\n".join(lines)


def to_json(results: dict[str, dict]) -> dict[str, Any]:
    """Results as JSON: each model's curve, adversarial accuracy and times."""
    return {
        k: {
            "curve": r["curve"].to_dict(),
            "adversarial": {str(e): a for e, a in r["adversarial"].items()},
            "times": r["times"],
        }
        for k, r in results.items()
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("robustbench_local").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    x, y = train.tensors
    train = TensorDataset(x[: args.n_train], y[: args.n_train])
    results = {}
    for name in DEFENSES:
        model = train_model(name, train, args)
        results[name] = evaluate(model, test, args)
        logging.info("%s: evaluated (%s)", name, results[name]["times"])
    print(f"\n{args.epochs} epochs on {len(train)} MNIST images each ({ARCH}, seed {args.seed})")
    print(table(results, args))
    times = {k: {t: round(v) for t, v in r["times"].items()} for k, r in results.items()}
    print(f"evaluation time (s): {times}")
    if args.out is not None:
        atomic_write_json(args.out, to_json(results), indent=1)


if __name__ == "__main__":
    main()
