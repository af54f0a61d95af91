"""MNIST-C and CIFAR-10-C corruptions: faithful to the reference code, and fast.

Faithful
    For every corruption and severity, the mean absolute pixel change ``mean |c(x) - x|`` of
    ours and of the reference code on the same images (target: ours within +-20% of the
    reference's), and, for MNIST-C at each corruption's benchmark setting, the accuracy of a
    standard MNIST CNN on the test images corrupted by ours and by the reference (target:
    within 3 points). MNIST-C uses MNIST test digits; CIFAR-10-C, which has no local CIFAR-10,
    uses 32 x 32 crops of the two natural photographs shipped with scikit-learn
    (``load_sample_images``). The reference's randomness is its own (NumPy's global seed),
    so single images differ; the comparison is of averages.

Fast
    All 15 MNIST-C corruptions at their benchmark setting on the 10,000 MNIST test images,
    timed in CPU seconds (median of 3 runs; target: under 30 s in all, on one thread), and
    images per second against the reference code's, also in CPU seconds (timed once on the
    accuracy run's images; target: median ratio >= 20x). CPU time, not wall time, because
    the machine is shared with other jobs.

The reference code is never imported here: it runs in a subprocess
(``benchmarks/_corruption_reference.py``) under ``--reference-python``, a Python with the
reference's old dependencies, reading the local copies given by ``--reference-mnist-c``
(a checkout of github.com/google-research/mnist-c) and ``--reference-cifar-c`` (a checkout of
github.com/hendrycks/robustness). Such a Python can be made with:

    python3.11 -m venv /work/refs/venv
    /work/refs/venv/bin/pip install "numpy<2" "scipy<1.12" scikit-image==0.20.0 \
        "opencv-python-headless<4.11" Wand==0.6.13 "setuptools<70" Pillow
    apt-get install imagemagick libmagickwand-dev      # for Wand (motion blur, snow)

The MNIST CNN (``mnist_small_cnn``, standard training) is cached under
``~/.cache/robustbench_local/bench/corruptions``.

Usage:
    python benchmarks/corruptions.py --reference-mnist-c /work/refs/mnist-c \
        --reference-cifar-c /work/refs/robustness [--reference-python /work/refs/venv/bin/python]
        [--quick] [--n-change N] [--n-accuracy N] [--threads 1] [--skip-speed]
        [--names shot_noise,fog,...]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import defenses
import robustbench_local as rbl
from benchmarks._common import default_data_dir
from robustbench_local.corruptions import corruption_info

WORKER = Path(__file__).resolve().parent / "_corruption_reference.py"
CACHE = Path.home() / ".cache" / "robustbench_local" / "bench" / "corruptions"
SINGLE_SETTING = {"stripe", "dotted_line", "zigzag", "canny_edges"}
CHANGE_TOL = 0.20
ACCURACY_TOL = 0.03


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference-mnist-c", required=True, help="checkout of google-research/mnist-c")
    p.add_argument("--reference-cifar-c", required=True, help="checkout of hendrycks/robustness")
    p.add_argument("--reference-python", default="/work/refs/venv/bin/python")
    p.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    p.add_argument("--n-change", type=int, default=None, help="images per change comparison")
    p.add_argument("--n-accuracy", type=int, default=None, help="MNIST test images for accuracy")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the cached MNIST CNN")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--names", default=None, help="only these corruptions (comma-separated)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)
    args.n_change = args.n_change or (100 if args.quick else 500)
    args.n_accuracy = args.n_accuracy or (500 if args.quick else 10000)
    return args


# ------------------------------------------------------------------------------ the data


def mnist_test(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    _, test = rbl.load_dataset("mnist", data_dir or default_data_dir())
    return test.tensors


def color_crops(n: int, seed: int) -> torch.Tensor:
    """``[n, 3, 32, 32]`` crops of scikit-learn's two sample photographs, downsized 4x."""
    from sklearn.datasets import load_sample_images

    photos = [
        torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)
        for im in load_sample_images().images
    ]
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)].permute(2, 0, 1).unsqueeze(0)
        small = torch.nn.functional.avg_pool2d(photo, 4)
        h, w = small.shape[-2:]
        r = int(torch.randint(0, h - 32, (1,), generator=gen))
        c = int(torch.randint(0, w - 32, (1,), generator=gen))
        crops.append(small[0, :, r : r + 32, c : c + 32])
    return (torch.stack(crops) * 255).round() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``[N, H, W]`` (gray) or ``[N, H, W, 3]`` uint8 images for the reference."""
    a = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return a[..., 0] if a.shape[-1] == 1 else a


# ------------------------------------------------------------------------- the reference


def run_reference(args, suite: str, x: torch.Tensor, jobs: list[tuple[str, int]]) -> dict:
    """The reference's outputs ``{(name, severity): [N, C, H, W]}`` and seconds per job."""
    code = args.reference_mnist_c if suite == "mnist_c" else args.reference_cifar_c
    with tempfile.TemporaryDirectory() as tmp:
        images, out = Path(tmp) / "in.npy", Path(tmp) / "out.npz"
        np.save(images, to_uint8(x))
        spec = ",".join(f"{n}:{s}" for n, s in jobs)
        cmd = [args.reference_python, str(WORKER), "--suite", suite, "--code", code]
        cmd += [
            "--images",
            str(images),
            "--out",
            str(out),
            "--jobs",
            spec,
            "--seed",
            str(args.seed),
        ]
        subprocess.run(cmd, check=True)
        data = np.load(out)
        outputs, seconds = {}, {}
        for n, s in jobs:
            y = torch.from_numpy(data[f"{n}:{s}"]).float()
            outputs[n, s] = y.unsqueeze(1) if y.dim() == 3 else y.permute(0, 3, 1, 2)
            seconds[n, s] = float(data[f"{n}:{s}:seconds"])
    return {"outputs": outputs, "seconds": seconds}


def reference_jobs(suite: str, names: list[str]) -> list[tuple[str, int]]:
    """Every (name, severity) the reference has: one level for its single-setting ones."""
    jobs = []
    for n in names:
        levels = [3] if suite == "mnist_c" and n in SINGLE_SETTING else range(1, 6)
        jobs += [(n, s) for s in levels]
    return jobs


# ---------------------------------------------------------------------------- faithful


def names_of(args, suite: str) -> list[str]:
    """The suite's corruptions, or those of ``--names`` that it has."""
    known = rbl.corruption_names(suite)
    if not args.names:
        return known
    return [n for n in args.names.split(",") if n in known]


def ours(x: torch.Tensor, suite: str, name: str, severity: int, seed: int) -> torch.Tensor:
    return rbl.corrupt(x, name, severity, suite=suite, seed=seed)


def change_table(args, suite: str, x: torch.Tensor) -> tuple[str, dict]:
    names = names_of(args, suite)
    jobs = reference_jobs(suite, names)
    ref = run_reference(args, suite, x, jobs)
    rows, ratios = [], {}
    header = f"{'corruption':<18}{'sev':>4}{'ours':>9}{'reference':>11}{'ratio':>8}  ok"
    for n, s in jobs:
        ours_change = float((ours(x, suite, n, s, args.seed) - x).abs().mean())
        ref_change = float((ref["outputs"][n, s] - x).abs().mean())
        ratio = ours_change / max(ref_change, 1e-12)
        ratios[n, s] = ratio
        ok = "yes" if abs(ratio - 1) <= CHANGE_TOL else "NO"
        rows.append(f"{n:<18}{s:>4}{ours_change:>9.4f}{ref_change:>11.4f}{ratio:>8.3f}  {ok}")
    inside = sum(abs(r - 1) <= CHANGE_TOL for r in ratios.values())
    title = (
        f"\nMean absolute pixel change, {suite} ({x.shape[0]} images): ours vs reference "
        f"({inside}/{len(ratios)} settings within +-{CHANGE_TOL:.0%})"
    )
    return "\n".join([title, header, *rows]), ref


def mnist_model(args, train_x: torch.Tensor | None = None) -> torch.nn.Module:
    """A standard ``mnist_small_cnn``, trained once and cached."""
    path = CACHE / f"mnist_small_cnn_standard_e{args.epochs}_s{args.seed}.pt"
    if path.exists():
        return rbl.load_checkpoint(path).eval()
    train, _ = rbl.load_dataset("mnist", args.data_dir or default_data_dir())
    torch.manual_seed(args.seed)
    model = rbl.create_model("mnist_small_cnn")
    standard = defenses.create("standard", epochs=args.epochs, seed=args.seed, progress=False)
    model = standard.fit(model, train)
    CACHE.mkdir(parents=True, exist_ok=True)
    rbl.save_checkpoint(model, path, meta={"recipe": "standard", "epochs": args.epochs})
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = sum(
        int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum())
        for i in range(0, x.shape[0], 1000)
    )
    return correct / x.shape[0]


def accuracy_table(args, x: torch.Tensor, y: torch.Tensor) -> tuple[str, dict]:
    model = mnist_model(args)
    names = names_of(args, "mnist_c")
    jobs = [(n, corruption_info(n, "mnist_c")["default"]) for n in names]
    ref = run_reference(args, "mnist_c", x, jobs)
    clean = accuracy(model, x, y)
    rows, diffs = [], []
    header = f"{'corruption':<15}{'sev':>4}{'ours':>9}{'reference':>11}{'diff':>8}  ok"
    for n, s in jobs:
        a_ours = accuracy(model, ours(x, "mnist_c", n, s, args.seed), y)
        a_ref = accuracy(model, ref["outputs"][n, s], y)
        diffs.append(a_ours - a_ref)
        ok = "yes" if abs(a_ours - a_ref) <= ACCURACY_TOL else "NO"
        rows.append(
            f"{n:<15}{s:>4}{a_ours:>9.2%}{a_ref:>11.2%}{(a_ours - a_ref) * 100:>+8.2f}  {ok}"
        )
    inside = sum(abs(d) <= ACCURACY_TOL for d in diffs)
    title = (
        f"\nMNIST CNN accuracy on MNIST-C at the benchmark settings ({x.shape[0]} test images, "
        f"clean {clean:.2%}): ours vs reference ({inside}/{len(diffs)} within 3 points)"
    )
    return "\n".join([title, header, *rows]), ref


# ------------------------------------------------------------------------------- fast


REPEATS = 3


def cpu_seconds(x: torch.Tensor, name: str, severity: int, seed: int) -> float:
    """CPU seconds of one run (as the reference is timed: fair on a shared machine)."""
    start = time.process_time()
    ours(x, "mnist_c", name, severity, seed)
    return time.process_time() - start


def speed_table(args, x: torch.Tensor, ref: dict, n_ref: int) -> str:
    names = names_of(args, "mnist_c")
    rows, ratios, total = [], [], 0.0
    header = (
        f"{'corruption':<15}{'sev':>4}{'ours s':>9}{'ours img/s':>12}{'ref img/s':>11}"
        f"{'speedup':>9}"
    )
    for n in names:
        s = corruption_info(n, "mnist_c")["default"]
        ours(x[:64], "mnist_c", n, s, args.seed)  # warm-up
        seconds = statistics.median(cpu_seconds(x, n, s, args.seed) for _ in range(REPEATS))
        total += seconds
        rate = x.shape[0] / seconds
        ref_rate = n_ref / ref["seconds"][n, s]
        ratios.append(rate / ref_rate)
        rows.append(
            f"{n:<15}{s:>4}{seconds:>9.3f}{rate:>12.0f}{ref_rate:>11.0f}{rate / ref_rate:>8.0f}x"
        )
    title = (
        f"\nSpeed, MNIST-C benchmark settings on {x.shape[0]} MNIST test images, "
        f"{torch.get_num_threads()} thread(s), CPU seconds, median of {REPEATS} (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): total {total:.1f} s "
        f"(target < 30 s), "
        f"median speedup {statistics.median(ratios):.0f}x (target >= 20x; reference timed on "
        f"{n_ref} images)"
    )
    return "\n".join([title, header, *rows])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    x_all, y_all = mnist_test(args.data_dir)
    text, _ = change_table(args, "mnist_c", x_all[: args.n_change])
    print(text, flush=True)
    text, _ = change_table(args, "cifar10_c", color_crops(args.n_change, args.seed))
    print(text, flush=True)
    n_acc = args.n_accuracy
    text, ref = accuracy_table(args, x_all[:n_acc], y_all[:n_acc])
    print(text, flush=True)
    if not args.skip_speed:
        print(speed_table(args, x_all, ref, n_acc), flush=True)


if __name__ == "__main__":
    main()
