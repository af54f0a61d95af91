"""How reliable is the README's MNIST fast-AT recipe across seeds and CPU kernel sets?

The recipe: ``defenses.create("fgsm_at", eps=0.3, alpha=0.375, epochs=10)`` (FGSM with a random
start, Adam with a cyclic learning rate peaking at 5e-3, batch 100, the catastrophic-overfitting
guard) on ``mnist_small_cnn``, trained on 55,000 MNIST training images with the other 5,000 held
out as the validation set (``dataset.val_size=5000``: a seeded permutation, as
``experiments.pipeline.load_data`` does; the guard draws its 512 images from it). Each trained
model is evaluated, with the kernels it was trained with, on the first ``--n-eval`` MNIST test
images: clean accuracy and the reference AutoAttack (``pyautoattack.AutoAttack``, version
``standard``, linf eps 0.3).

Every (seed, kernel set) pair runs in its own subprocess with ``ATEN_CPU_CAPABILITY`` set
(``native``: the variable unset, the best kernels of the CPU) and ``torch.set_num_threads(1)``.
Trained models and evaluations are cached under ``--cache`` (default
``~/.cache/robustbench_local/bench/fast_at_recipe``), keyed by the recipe, seed, kernel set and
torch version, so a rerun only evaluates what is missing. The table has one row per pair (clean
and AutoAttack accuracy, the epochs trained, the guard's per-epoch PGD-10 accuracy and the epoch
it stopped at, if any), then the mean, min-max and standard deviation over all pairs.

``--set key=value`` changes a setting of the recipe (``alpha=0.25``, ``guard_drop=0.1``,
``lr=0.003``...; values are read as Python literals) to measure a variant.

Usage:
    python benchmarks/fast_at_recipe.py                   # 3 seeds x 3 kernel sets, 1000 images
    python benchmarks/fast_at_recipe.py --quick           # seed 0, 2 kernel sets, 3 epochs, 100
    python benchmarks/fast_at_recipe.py --seeds 0,1 --kernels avx2,native --n-eval 100 \
        --set alpha=0.25 [--jobs 2] [--cache DIR] [--data-dir DIR]

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020 (AutoAttack).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir
from defenses.storage import atomic_torch_save, atomic_write_json

RECIPE: dict[str, Any] = {"eps": 0.3, "alpha": 0.375, "epochs": 10}
N_VAL = 5000
KERNELS = ("default", "avx2", "native")
CACHE = Path.home() / ".cache" / "robustbench_local" / "bench" / "fast_at_recipe"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--kernels", default=",".join(KERNELS), help="default, avx2, avx512, native")
    p.add_argument("--n-eval", type=int, default=1000, help="first N MNIST test images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    p.add_argument("--quick", action="store_true", help="seed 0, default+native, 3 epochs, 100")
    p.add_argument("--jobs", type=int, default=1, help="pairs run at once (one thread each)")
    p.add_argument("--monitor", type=int, default=0, help="log APGD-CE on N val images/epoch")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.kernels, args.n_eval = "0", "default,native", 100
        args.overrides = ["epochs=3", *args.overrides]
    return args


def recipe(overrides: list[str]) -> dict[str, Any]:
    """The recipe's defense settings with the ``key=value`` overrides applied."""
    settings = dict(RECIPE)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value (e.g. alpha=0.25), got {item!r}")
        try:
            settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            settings[key] = value
    return settings


def model_key(settings: dict[str, Any], seed: int, kernel: str, monitor: int = 0) -> str:
    """Cache name of one trained model: a digest of what determines its weights (and log)."""
    doc = {"recipe": settings, "seed": seed, "kernel": kernel, "torch": torch.__version__}
    if monitor:
        doc["monitor"] = monitor
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    return f"s{seed}_{kernel}_{digest}"


# --------------------------------------------------------------------------- one worker


def split(train: TensorDataset, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """55k training / 5k validation images (a seeded permutation, as the pipeline's val_size)."""
    x, y = train.tensors
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    val, rest = order[:N_VAL], order[N_VAL:]
    return TensorDataset(x[rest], y[rest]), TensorDataset(x[val], y[val])


def epoch_logger(
    model: torch.nn.Module, val: TensorDataset, n: int, history: list[dict[str, float]]
) -> Callable[[int, dict[str, float]], None]:
    """A Trainer callback appending each epoch's metrics to ``history``.

    With ``n > 0`` it adds ``monitor_apgd_acc``, APGD-CE accuracy on the first ``n`` validation
    images: a diagnostic stronger than the guard's PGD-10. It runs under
    ``torch.random.fork_rng``, so the training's random stream (and its weights) stays the same.
    """
    x, y = (t[:n] for t in val.tensors)
    apgd = attacks.create("apgd_ce", seed=0)

    def log(epoch: int, metrics: dict[str, float]) -> None:
        row = {"epoch": epoch, **metrics}
        if n > 0:
            with torch.random.fork_rng():
                row["monitor_apgd_acc"] = float(
                    apgd(model, x, y, eps=RECIPE["eps"]).robust_accuracy
                )
        history.append(row)

    return log


def train_model(job: dict[str, Any], path: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train the recipe for one seed (or load it from ``path``); the model and its log."""
    meta_path = path.with_suffix(".json")
    model = rbl.create_model("mnist_small_cnn")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), json.loads(meta_path.read_text())
    train, _ = rbl.load_dataset("mnist", job["data_dir"])
    train, val = split(train, job["seed"])
    torch.manual_seed(job["seed"])
    model = rbl.create_model("mnist_small_cnn")
    history: list[dict[str, float]] = []
    d = defenses.create("fgsm_at", seed=job["seed"], progress=False, **job["settings"])
    start, cpu = time.perf_counter(), time.process_time()
    log = epoch_logger(model, val, job.get("monitor", 0), history)
    model = d.fit(model, train, val, callbacks=[log])
    meta = {key: job[key] for key in ("seed", "kernel", "settings")}
    meta |= {"train_time_s": time.perf_counter() - start, "train_cpu_s": time.process_time() - cpu}
    meta["history"] = history
    atomic_torch_save(model.state_dict(), path)
    atomic_write_json(meta_path, meta)
    return model.eval(), meta


def evaluate(model: torch.nn.Module, n: int, data_dir: str | None) -> dict[str, float]:
    """Clean and reference-AutoAttack (standard, linf 0.3) accuracy on the first ``n`` images."""
    from pyautoattack import AutoAttack

    _, test = rbl.load_dataset("mnist", data_dir)
    x, y = (t[:n] for t in test.tensors)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    aa = AutoAttack(
        model, norm="Linf", eps=RECIPE["eps"], version="standard", seed=0, device=x.device
    )
    aa.verbose = False
    start, cpu = time.perf_counter(), time.process_time()
    out = aa.run_standard_evaluation(x, y, batch_size=500)
    x_adv = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        robust = float((model(x_adv).argmax(1) == y).float().mean())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"clean": clean, "aa": robust, "aa_time_s": wall, "aa_cpu_s": cpu}


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or load) and evaluate one (seed, kernel set) pair in this process."""
    torch.set_num_threads(1)
    cache = Path(job["cache"])
    cache.mkdir(parents=True, exist_ok=True)
    key = model_key(job["settings"], job["seed"], job["kernel"], job.get("monitor", 0))
    path = cache / (key + ".pt")
    model, meta = train_model(job, path)
    eval_path = path.with_name(f"{path.stem}_eval{job['n_eval']}.json")
    if eval_path.exists():
        result = json.loads(eval_path.read_text())
    else:
        result = evaluate(model, job["n_eval"], job["data_dir"])
        atomic_write_json(eval_path, result)
    capability = torch.backends.cpu.get_cpu_capability()
    return {**meta, **result, "capability": capability}


# --------------------------------------------------------------------------- the driver


def run_pair(args: argparse.Namespace, settings: dict[str, Any], seed: int, kernel: str) -> dict:
    """Run one pair in a subprocess with its kernel set; its row."""
    job = {
        "seed": seed,
        "kernel": kernel,
        "settings": settings,
        "n_eval": args.n_eval,
        "monitor": args.monitor,
        "cache": str(args.cache),
        "data_dir": args.data_dir or default_data_dir(),
    }
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if kernel != "native":
        env["ATEN_CPU_CAPABILITY"] = kernel
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}, kernels {kernel} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    logging.info("seed %d %s: clean %.4f AA %.4f", seed, kernel, row["clean"], row["aa"])
    return row


def guard_log(row: dict[str, Any]) -> str:
    """The guard's PGD-10 accuracy per epoch (percent), a '!' after a rollback.

    With ``--monitor``, each epoch reads ``pgd/apgd`` (the monitor's APGD-CE accuracy).
    """
    marks = []
    for h in row["history"]:
        acc, apgd = h.get("guard_pgd_acc"), h.get("monitor_apgd_acc")
        mark = "" if acc is None else f"{100 * acc:.0f}"
        mark += "" if apgd is None else f"/{100 * apgd:.0f}"
        marks.append(mark + ("!" if h.get("guard_rollback") else ""))
    return " ".join(marks)


def summary(name: str, values: list[float]) -> str:
    """Mean, min-max and standard deviation (percent) of one column."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (
        f"{name:<8}mean {100 * statistics.mean(values):6.2f}%   min-max "
        f"{100 * min(values):.2f}-{100 * max(values):.2f}%   sd {100 * sd:.2f}"
    )


def print_table(rows: list[dict[str, Any]], settings: dict[str, Any], n_eval: int) -> None:
    """One line per (seed, kernel set), then the summary over all of them."""
    print(f"\nfgsm_at {settings} on 55k MNIST, first {n_eval} test images, AA standard linf 0.3")
    print(f"{'seed':>4} {'kernels':<8}{'cpu':<8}{'clean':>8}{'AA':>8}{'epochs':>7}  guard PGD-10 %")
    for r in rows:
        print(
            f"{r['seed']:>4} {r['kernel']:<8}{r['capability']:<8}{100 * r['clean']:>7.2f}%"
            f"{100 * r['aa']:>7.2f}%{len(r['history']):>7}  {guard_log(r)}"
        )
    print(summary("clean", [r["clean"] for r in rows]))
    print(summary("AA", [r["aa"] for r in rows]))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    settings = recipe(args.overrides)
    pairs = [(int(s), k) for s in args.seeds.split(",") for k in args.kernels.split(",")]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(lambda p: run_pair(args, settings, *p), pairs))
    print_table(rows, settings, args.n_eval)
    if args.out is not None:
        atomic_write_json(args.out, rows)


if __name__ == "__main__":
    main()
