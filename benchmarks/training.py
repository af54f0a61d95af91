"""Seconds per epoch of PGD adversarial training: defenses' pgd_at vs ART's Madry trainer.

Both train the same MNIST small CNN (Wong et al. 2020; robustbench_local's "mnist_small_cnn"),
from the same initial weights, on the same first ``--n`` MNIST training images, with the same
attack (linf PGD-40, eps 0.3, step 0.01, one random start), batch size and optimiser (Adam,
lr 1e-3), on the CPU with the same number of threads.

ART's ``AdversarialTrainerMadryPGD`` builds its PGD with ART's default attack batch size (32);
``--art-attack-batch`` (default: the training batch size) sets it on the trainer's attack so
both craft examples on whole batches. The ART row says which was used.

Usage:
    python benchmarks/training.py [--n 10000] [--epochs 1] [--batch-size 100] [--threads 1]

"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir

EPS, STEPS, STEP_SIZE, LR = 0.3, 40, 0.01, 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="MNIST training images (default 10000)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trainer (default 1)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--art-attack-batch", type=int, default=None)
    p.add_argument("--skip-art", action="store_true", help="only time defenses' pgd_at")
    p.add_argument(
        "--data-dir", default=None, help="MNIST mirror (default: env, ../shared/datasets)"
    )
    args = p.parse_args(argv)
    if args.n < 1 or args.epochs < 1 or args.batch_size < 1 or args.threads < 1:
        p.error("--n, --epochs, --batch-size and --threads must be positive")
    return args


def load_data(n: int, data_dir: str | None) -> TensorDataset:
    train, _ = rbl.load_dataset("mnist", data_dir or default_data_dir())
    x, y = train.tensors
    return TensorDataset(x[:n].contiguous(), y[:n].contiguous())


def time_ours(model: nn.Module, data: TensorDataset, args: argparse.Namespace) -> list[float]:
    times: list[float] = []
    d = defenses.create(
        "pgd_at",
        eps=EPS,
        steps=STEPS,
        step_size=STEP_SIZE,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer="adam",
        lr=LR,
        progress=False,
    )
    d.fit(model, data, callbacks=[lambda e, m: times.append(m["epoch_time"])])
    return times


def time_art(model: nn.Module, data: TensorDataset, args: argparse.Namespace) -> list[float]:
    from art.defences.trainer import AdversarialTrainerMadryPGD
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=LR),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    trainer = AdversarialTrainerMadryPGD(
        clf,
        nb_epochs=1,
        batch_size=args.batch_size,
        eps=EPS,
        eps_step=STEP_SIZE,
        max_iter=STEPS,
        num_random_init=1,
    )
    trainer.attack.set_params(batch_size=args.art_attack_batch, verbose=False)
    x = data.tensors[0].numpy().astype(np.float32)
    y = data.tensors[1].numpy()
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        trainer.fit(x, y, nb_epochs=1, batch_size=args.batch_size)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.art_attack_batch = args.art_attack_batch or args.batch_size
    logging.basicConfig(level=logging.WARNING)
    for name in ("art", "tqdm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    data = load_data(args.n, args.data_dir)
    torch.manual_seed(0)
    init = rbl.create_model("mnist_small_cnn")
    rows = [("defenses pgd_at", time_ours(copy.deepcopy(init), data, args))]
    if not args.skip_art:
        label = f"ART AdversarialTrainerMadryPGD (attack batch {args.art_attack_batch})"
        rows.append((label, time_art(copy.deepcopy(init), data, args)))
    print(
        f"\nPGD-{STEPS} adversarial training, eps {EPS}, step {STEP_SIZE}, mnist_small_cnn, "
        f"n={len(data)}, batch {args.batch_size}, {args.epochs} epoch(s), "
        f"{args.threads} thread(s), torch {torch.__version__}"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'trainer':<{width}}  {'s/epoch (median)':>16}  {'img/s':>8}  {'vs ART':>7}")
    ref = statistics.median(rows[-1][1]) if len(rows) > 1 else None
    for label, times in rows:
        med = statistics.median(times)
        ratio = f"{med / ref:.2f}x" if ref else "-"
        print(f"{label:<{width}}  {med:>16.2f}  {len(data) / med:>8.0f}  {ratio:>7}")


if __name__ == "__main__":
    main()
