"""Wall time of one sharded evaluation with 1 and 2 processes (torchrun, gloo, one thread each).

The evaluation: a PGD-40 robustness curve over 8 linf eps (0.0375 ... 0.3) on 2000 MNIST test
images of an FGSM-RS adversarially trained ``mnist_small_cnn`` (``defenses.create("fgsm_at")``,
Wong et al. 2020; trained once, then cached), with the preflight and the masking checks, at
batch size 500. Each setting is launched with ``torchrun --nproc_per_node=N`` and timed from
the launch to the exit of the launcher, start-up included; one torch thread per process
(``OMP_NUM_THREADS=1``). The per-sample results of the 1- and 2-process runs are compared
(they must be equal: the slices fall on batch boundaries). Target: 2 processes <= 0.6x the
wall time of 1 on a 2-core machine.

Usage:
    python benchmarks/distributed.py                 # the full measurement (several minutes)
    python benchmarks/distributed.py --quick         # 200 images, PGD-10, 4 eps, a 1-epoch
                                                     # standard-trained model: a smoke run
    python benchmarks/distributed.py --repeats 3 --procs 1,2

References:
    Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial training", ICLR 2020.
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import default_data_dir  # noqa: E402

logger = logging.getLogger("benchmarks.distributed")
TARGET = 0.6
WORKER_ENV = "BENCH_DISTRIBUTED_JOB"  # a torchrun worker reads its settings from this JSON file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="MNIST test images evaluated")
    p.add_argument("--steps", type=int, default=40, help="PGD steps")
    p.add_argument("--n-eps", type=int, default=8, help="eps grid: k * 0.3 / n_eps, k = 1..n_eps")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--procs", default="1,2", help="process counts to time, e.g. 1,2")
    p.add_argument("--repeats", type=int, default=1, help="launches per setting (median)")
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--train-n", type=int, default=20000, help="MNIST training images")
    p.add_argument("--recipe", default="fgsm_at", help="training defense (quick: standard)")
    p.add_argument("--no-checks", action="store_true", help="skip preflight and masking checks")
    p.add_argument("--cache", default=None, help="model cache folder")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="outputs/bench_distributed")
    p.add_argument("--quick", action="store_true",
                   help="200 images, PGD-10, 4 eps, a 1-epoch standard-trained model")  # fmt: skip
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per launch")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.steps, args.n_eps = 200, 10, 4
        args.train_epochs, args.train_n, args.recipe = 1, 6000, "standard"
    return args


def eps_grid(n_eps: int) -> list[float]:
    return [round(0.3 * k / n_eps, 6) for k in range(1, n_eps + 1)]


def cache_dir(args: argparse.Namespace) -> Path:
    base = args.cache or os.environ.get("ROBUSTBENCH_LOCAL_CACHE") or "~/.cache/robustbench_local"
    return Path(base).expanduser() / "bench"


def trained_model(args: argparse.Namespace) -> Path:
    """The cached FGSM-AT checkpoint (trained here on the first call)."""
    import defenses
    import robustbench_local as rbl

    name = f"mnist_small_cnn_{args.recipe}_e{args.train_epochs}_n{args.train_n}.pt"
    path = cache_dir(args) / name
    if path.exists():
        return path
    logger.info("training the %s model once (cached at %s)", args.recipe, path)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    train, _ = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    torch.manual_seed(0)
    model = rbl.create_model("mnist_small_cnn")
    defense = defenses.create(args.recipe, epochs=args.train_epochs, seed=0, progress=False)
    start = time.perf_counter()
    model = defense.fit(model, rbl.subset(train, args.train_n, seed=0))
    meta = {"recipe": args.recipe, "epochs": args.train_epochs, "train_n": args.train_n}
    rbl.save_checkpoint(model, path, meta={**meta, "train_s": time.perf_counter() - start})
    return path


def evaluation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """What ``robustness_curve`` gets besides the model and data (no extra reference run)."""
    import inspect

    from robustbench_local.evaluate import robustness_curve

    kw = {"n_examples": args.n, "batch_size": args.batch_size, "seed": 0, "progress": False,
          "checks": not args.no_checks}  # fmt: skip
    if "reference" in inspect.signature(robustness_curve).parameters:
        kw["reference"] = False  # time the PGD curve itself, as in the issue
    return kw


def worker(args: argparse.Namespace) -> None:
    """One torchrun process: evaluate, rank 0 writes the curve."""
    import attacks
    import robustbench_local as rbl
    from robustbench_local import distributed

    torch.set_num_threads(1)
    world = distributed.init_distributed("gloo")
    model = rbl.load_checkpoint(trained_model(args))
    _, test = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    pgd = attacks.create("pgd", steps=args.steps, seed=0)
    start = time.perf_counter()
    curve = rbl.robustness_curve(model, test, {"pgd": pgd}, eps_grid(args.n_eps),
                                 **evaluation_kwargs(args))  # fmt: skip
    elapsed = time.perf_counter() - start
    if world.is_main:
        doc = {"curve": curve.to_dict(), "eval_s": elapsed, "world_size": world.size}
        Path(args.worker).write_text(json.dumps(doc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(args: argparse.Namespace, nproc: int, result: Path) -> float:
    """Seconds from the launch of ``torchrun --nproc_per_node=nproc`` to its exit."""
    job = result.with_suffix(".job.json")
    job.write_text(json.dumps({**vars(args), "cache": str(cache_dir(args).parent),
                               "worker": str(result)}))  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
           __file__]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), WORKER_ENV: str(job)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes failed:\n{proc.stderr[-4000:]}")
    return wall


def measure(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """Launch every setting ``repeats`` times, interleaved (1, 2, 1, 2, ...) against drift."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    procs = [int(p) for p in args.procs.split(",")]
    rows: dict[int, dict[str, Any]] = {p: {"walls": [], "evals": []} for p in procs}
    for rep in range(args.repeats):
        for nproc in procs:
            result = out / f"curve_np{nproc}_r{rep}.json"
            rows[nproc]["walls"].append(launch(args, nproc, result))
            doc = json.loads(result.read_text())
            rows[nproc]["evals"].append(doc["eval_s"])
            rows[nproc]["curve"] = doc["curve"]
            logger.info(
                "%d process(es), launch %d: %.1f s", nproc, rep + 1, rows[nproc]["walls"][-1]
            )
    for r in rows.values():
        r["wall"], r["eval"] = statistics.median(r["walls"]), statistics.median(r["evals"])
    return rows


def table(rows: dict[int, dict[str, Any]], args: argparse.Namespace) -> str:
    base = rows[min(rows)]
    ref = base["curve"]
    lines = [
        f"PGD-{args.steps} curve, {args.n_eps} eps, {args.n} MNIST images, {args.recipe} "
        f"mnist_small_cnn, batch {args.batch_size}, 1 torch thread per process, "
        f"{os.cpu_count()} cores, torch {torch.__version__}",
        f"{'processes':>9} {'wall s (median)':>16} {'eval s':>8} {'ratio':>7} "
        f"{'launches':>20} {'same per-sample':>16}",
    ]
    for nproc, r in rows.items():
        same = r["curve"]["robust"] == ref["robust"] and r["curve"]["indices"] == ref["indices"]
        launches = ", ".join(f"{w:.1f}" for w in r["walls"])
        lines.append(
            f"{nproc:>9} {r['wall']:>16.1f} {r['eval']:>8.1f} {r['wall'] / base['wall']:>6.2f}x "
            f"{launches:>20} {'yes' if same else 'NO':>16}"
        )
    acc = " ".join(f"{a:.3f}" for a in ref["worst_case"])
    lines.append(f"clean {ref['clean_accuracy']:.3f}; robust accuracy per eps: {acc}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines.append(f"target: {max(rows)} processes <= {TARGET}x the wall time of {min(rows)}; "
                 f"load average at the end {load}")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if os.environ.get(WORKER_ENV):
        worker(argparse.Namespace(**json.loads(Path(os.environ[WORKER_ENV]).read_text())))
        return
    args = parse_args(argv)
    trained_model(args)  # train and cache before timing anything
    rows = measure(args)
    print(table(rows, args))


if __name__ == "__main__":
    main()
