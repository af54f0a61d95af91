"""Reproduce Wong et al. (2020)'s MNIST fast adversarial training with defenses' fgsm_at.

Recipe (the paper's MNIST setting, also fgsm_at's defaults): mnist_small_cnn, FGSM with a
uniform random start, eps 0.3, step alpha 0.375, Adam with a cyclic learning rate peaking at
5e-3 at 40% of training, 10 epochs of batch 100 on the 60k MNIST training images (minus the
512 images fgsm_at holds out for its catastrophic-overfitting guard, since no validation set
is passed). Evaluation as in the paper: clean accuracy and PGD-50 (step 0.01) with 10 random
restarts at eps 0.3 on the 10k MNIST test images. The paper reports 98.5% clean and 88.77%
PGD accuracy.

Usage:
    python benchmarks/fast_at_mnist.py [--epochs 10] [--restarts 10] [--n-test 10000]
        [--out outputs/fast_at_mnist] [--threads 1]

"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks
import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir
from defenses.storage import atomic_write_json

PAPER = {"clean": 0.985, "pgd": 0.8877}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--restarts", type=int, default=10, help="PGD-50 restarts (paper: 10)")
    p.add_argument("--steps", type=int, default=50, help="PGD steps (paper: 50)")
    p.add_argument("--n-test", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size")
    p.add_argument("--out", default="outputs/fast_at_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    return p.parse_args(argv)


def evaluate(model, x, y, args) -> dict[str, float]:
    pgd = attacks.create("pgd", steps=args.steps, step_size=0.01, restarts=args.restarts, seed=0)
    clean = robust = 0
    start = time.perf_counter()
    for i in range(0, x.shape[0], args.batch_size):
        res = pgd(model, x[i : i + args.batch_size], y[i : i + args.batch_size], eps=0.3)
        clean += int(res.clean_correct.sum())
        robust += int((~res.success).sum())
        logging.info("evaluated %d/%d", min(i + args.batch_size, x.shape[0]), x.shape[0])
    n = x.shape[0]
    return {"clean": clean / n, "pgd": robust / n, "eval_time_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    train, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    torch.manual_seed(args.seed)
    model = rbl.create_model("mnist_small_cnn")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    d = defenses.create("fgsm_at", epochs=args.epochs, seed=args.seed, progress=args.progress)
    start = time.perf_counter()
    model = d.fit(
        model,
        train,
        callbacks=[lambda e, m: history.append({"epoch": e, **m})],
        checkpoint_dir=out / "checkpoints",
        resume=True,
    )
    train_time = time.perf_counter() - start
    rbl.save_checkpoint(model, out / "fgsm_at_mnist_small_cnn.pt", meta={"recipe": "wong2020"})
    x, y = test.tensors
    result = evaluate(model, x[: args.n_test], y[: args.n_test], args)
    result |= {"train_time_s": train_time, "epochs": args.epochs, "restarts": args.restarts}
    atomic_write_json(out / "results.json", {"result": result, "history": history}, indent=2)
    print(f"\nfgsm_at on MNIST, mnist_small_cnn, {args.epochs} epochs ({train_time:.0f} s)")
    print(f"{'':<26}{'clean':>8}{f'PGD-{args.steps} x{args.restarts}':>14}")
    print(f"{'this run (test n=' + str(args.n_test) + ')':<26}{result['clean']:>8.2%}", end="")
    print(f"{result['pgd']:>14.2%}")
    print(f"{'Wong et al. 2020':<26}{PAPER['clean']:>8.2%}{PAPER['pgd']:>14.2%}")


if __name__ == "__main__":
    main()
