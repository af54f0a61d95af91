"""The GPU check: attack throughput, the reference suite, bf16 training steps, CPU/CUDA agreement.

On a CUDA machine this prints the torch, CUDA, cuDNN and GPU versions, then one table:

- PGD-10 throughput (images/s) on ``preact_resnet18`` with CIFAR-shaped inputs, a fixed number
  of steps (``early_stop=False``, so the figure measures throughput, not how fast samples
  break). Random weights and inputs; labels are the model's own predictions, so every sample
  is attacked.
- The reference suite (``standard_suite("linf")``, at its full default budgets) on the same
  model and inputs, images/s. A suite cascades on survivors, so its figure depends on how many
  samples survive each stage; the table says how many survived.
- One training step of ``preact_resnet18`` through ``defenses.Trainer`` in fp32 and with its
  bf16 autocast (and with ``channels_last`` where the Trainer has that option), ms per step.
- CPU/CUDA agreement: a small model trained on CPU, a PGD-10 curve on CPU and on CUDA; robust
  accuracy must agree within 1 point at every eps (exit 1 if not).

Without CUDA it says so and exits 0. It imports nothing beyond torch, numpy, scipy and the
project's ``attacks``, ``defenses`` and ``robustbench_local`` (no MLflow, Hydra or ART; the
last line of the output checks it), and runs from a plain checkout on any PyTorch 2.x:

    PYTHONPATH=. python benchmarks/gpu.py [--batch 256] [--quick]
    PYTHONPATH=. python benchmarks/gpu.py --device cpu --quick   # the same code path on CPU

``tqdm`` (the project's progress bars, all disabled here) is replaced by a no-op stand-in when
it is not installed.

References:
    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
    He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016 (pre-activation ResNet).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORBIDDEN = ("mlflow", "hydra", "omegaconf", "art", "sklearn", "matplotlib", "pandas")
CIFAR_EPS = 8 / 255


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cuda:N; cpu for a dry run")
    p.add_argument("--batch", type=int, default=256, help="images per attack call")
    p.add_argument("--suite-batch", type=int, default=128, help="images for the reference suite")
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    p.add_argument("--quick", action="store_true", help="small batches and few repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.suite_batch, args.train_batch, args.repeats = 16, 8, 16, 2
    return args


def _stand_in_tqdm() -> None:
    """Register a no-op ``tqdm`` when the real one is missing (every bar here is disabled)."""
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        pass
    else:
        return

    class NoBar:
        def __init__(self, iterable: Any = None, *args: Any, **kwargs: Any) -> None:
            self.iterable = iterable

        def __iter__(self) -> Any:
            return iter(self.iterable)

        def __enter__(self) -> NoBar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def __getattr__(self, name: str) -> Callable[..., None]:
            return lambda *a, **k: None

    top, auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
    top.tqdm = auto.tqdm = NoBar  # type: ignore[attr-defined]
    top.auto = auto  # type: ignore[attr-defined]
    sys.modules.update({"tqdm": top, "tqdm.auto": auto})
    print("note: tqdm is not installed; using a no-op stand-in (progress bars are off here)")


def versions(device: torch.device) -> list[str]:
    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"CUDA (build) {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    ]
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        lines.append(
            f"GPU {device.index or 0}: {props.name}, compute capability {props.major}.{props.minor}"
            f", {props.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)"
        )
    return lines


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], Any], device: torch.device, repeats: int, warmup: bool = True
) -> tuple[float, Any]:
    """Median seconds per call of ``fn`` (after one warm-up call), and the last result."""
    out = fn() if warmup else None
    times = []
    for _ in range(max(1, repeats)):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def cifar_model_and_batch(n: int, device: torch.device) -> tuple[nn.Module, torch.Tensor, Any]:
    """A random-weight ``preact_resnet18`` on ``device``, ``n`` random inputs, its predictions."""
    import robustbench_local as rbl

    torch.manual_seed(0)
    model = rbl.create_model("preact_resnet18").to(device).eval()
    x = torch.rand(n, 3, 32, 32, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def pgd_throughput(args: argparse.Namespace, device: torch.device) -> list[str]:
    import attacks

    model, x, y = cifar_model_and_batch(args.batch, device)
    pgd = attacks.create("pgd", steps=10, early_stop=False, seed=0)
    sec, res = timed(lambda: pgd(model, x, y, eps=CIFAR_EPS), device, args.repeats)
    per = res.n_backward / args.batch
    return [
        f"PGD-10 (no early stop), preact_resnet18 fp32, batch {args.batch:<4}  "
        f"{args.batch / sec:>10.1f} images/s  ({per:.0f} backward passes per image)"
    ]


def suite_throughput(args: argparse.Namespace, device: torch.device) -> list[str]:
    """The suite at eps 8/255 and, unless quick, at a tiny eps where its later stages run too."""
    from robustbench_local.benchmark import standard_suite

    model, x, y = cifar_model_and_batch(args.suite_batch, device)
    suite = standard_suite("linf")
    names = "+".join(a.name for a in getattr(suite, "members", [])) or suite.name
    out = []
    for k, eps in enumerate([CIFAR_EPS] if args.quick else [CIFAR_EPS, CIFAR_EPS / 32]):
        sec, res = timed(lambda e=eps: suite(model, x, y, eps=e), device, 1, warmup=k == 0)
        n = args.suite_batch
        broken = res.details.get("broken_by", {}) if isinstance(res.details, dict) else {}
        out.append(
            f"reference suite ({names}) eps {eps * 255:.2f}/255, batch {n:<4}"
            f"{n / sec:>10.1f} images/s  ({int((~res.success).sum())}/{n} survived; "
            f"{res.n_forward / n:.0f} fwd, {res.n_backward / n:.0f} bwd per image; "
            f"broken by {broken or '-'})"
        )
    return out


def step_time(args: argparse.Namespace, device: torch.device, **options: Any) -> float:
    """Seconds per training step of preact_resnet18 with ``defenses.Trainer(**options)``."""
    import robustbench_local as rbl
    from defenses import Trainer

    steps = 8 if args.quick else 40
    torch.manual_seed(0)
    model = rbl.create_model("preact_resnet18").to(device)
    n = steps * args.train_batch
    data = torch.utils.data.TensorDataset(
        torch.rand(n, 3, 32, 32, device=device), torch.randint(0, 10, (n,), device=device)
    )
    epochs: list[float] = []
    trainer = Trainer(epochs=2, batch_size=args.train_batch, lr=0.01, progress=False, **options)
    trainer.fit(model, data, callbacks=[lambda e, m: epochs.append(m["epoch_time"])])
    return epochs[-1] / steps  # the second epoch: kernels chosen, caches warm


def training_steps(args: argparse.Namespace, device: torch.device) -> list[str]:
    from defenses import Trainer

    settings: list[tuple[str, dict[str, Any]]] = [("fp32", {}), ("bf16 autocast", {"bf16": True})]
    out, base = [], None
    if "channels_last" in inspect.signature(Trainer).parameters:
        settings += [("fp32 channels_last", {"channels_last": True}),
                     ("bf16 channels_last", {"bf16": True, "channels_last": True})]  # fmt: skip
    else:
        out.append("(channels_last is not a Trainer option in this checkout: not measured)")
    for label, options in settings:
        sec = step_time(args, device, **options)
        base = base or sec
        out.append(
            f"training step preact_resnet18 {label:<18} batch {args.train_batch:<4}"
            f"{1000 * sec:>8.1f} ms/step  ({base / sec:.2f}x fp32)"
        )
    return out


def small_task(n: int = 600) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained on CPU on 10 noisy prototypes in [0, 1]^(1x8x8) (deterministic)."""
    g = torch.Generator().manual_seed(0)
    protos = torch.rand(10, 1, 8, 8, generator=g)
    y = torch.arange(n) % 10
    x = (protos[y] + 0.25 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[: n // 2]), y[: n // 2]).backward()
        opt.step()
    return model.eval(), x[n // 2 :], y[n // 2 :]


def agreement(device: torch.device) -> tuple[list[str], bool]:
    """PGD-10 curves of one CPU-trained model on CPU and on ``device``: within 1 point?"""
    import attacks
    import robustbench_local as rbl
    from robustbench_local.evaluate import robustness_curve

    model, x, y = small_task()
    eps = [0.05, 0.1, 0.15, 0.2, 0.25]
    kw: dict[str, Any] = {"batch_size": 100, "progress": False}
    if "reference" in inspect.signature(robustness_curve).parameters:
        kw["reference"] = False
    pgd = attacks.create("pgd", steps=10, seed=0)
    cpu = rbl.robustness_curve(model, (x, y), {"pgd": pgd}, eps, device="cpu", **kw)
    gpu_model = copy.deepcopy(model).to(device)
    dev = rbl.robustness_curve(gpu_model, (x, y), {"pgd": pgd}, eps, device=device, **kw)
    a, b = cpu.accuracy("pgd"), dev.accuracy("pgd")
    gap = float((a - b).abs().max())
    same = float((cpu.robust["pgd"] == dev.robust["pgd"]).float().mean())
    ok = gap <= 0.01 and abs(cpu.clean_accuracy - dev.clean_accuracy) <= 0.01
    accs = " ".join(f"{float(u):.3f}/{float(v):.3f}" for u, v in zip(a, b, strict=True))
    line = (
        f"CPU/{device.type} agreement, PGD-10 curve on {len(y)} samples, robust acc cpu/dev "
        f"{accs}: max gap {100 * gap:.1f} points, {same:.1%} same per-sample -> "
        f"{'OK' if ok else 'DISAGREE (> 1 point)'}"
    )
    return [line], ok


def imported_forbidden() -> list[str]:
    return sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    print("\n".join(versions(device)))
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            f"no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
            "torch.cuda.is_available() is False): nothing to measure. Run this on a machine "
            "with an NVIDIA GPU: PYTHONPATH=. python benchmarks/gpu.py"
        )
        return 0
    _stand_in_tqdm()
    torch.backends.cudnn.benchmark = True
    lines = pgd_throughput(args, device) + suite_throughput(args, device)
    lines += training_steps(args, device)
    agree, ok = agreement(device)
    print("\n".join(lines + agree))
    bad = imported_forbidden()
    print(f"imported MLflow/Hydra/ART/...: {', '.join(bad) if bad else 'none'}")
    return 0 if ok and not bad else 1


if __name__ == "__main__":
    sys.exit(main())
