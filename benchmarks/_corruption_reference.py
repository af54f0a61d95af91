"""Run the reference corruption code (MNIST-C / CIFAR-10-C) on images from a .npy file.

Runs under a separate Python that has the reference's dependencies (old NumPy, scikit-image
with ``multichannel=``, OpenCV, Wand + ImageMagick); see ``benchmarks/corruptions.py`` for how
to build one. It imports only NumPy, Pillow and the reference code (never torch or this
project), read from the local copy given by ``--code``, with small shims for APIs that the
reference needs and current libraries dropped:

* ``np.float_``/``np.int`` (removed from NumPy);
* ``skimage.filters.gaussian(..., multichannel=)``, mapped to ``channel_axis=-1`` (which, like
  the old keyword, takes the last axis of a 2-D image for channels);
* for ``make_cifar_c.py``, only the functions are executed (the file's module code downloads
  CIFAR-10 and writes the whole dataset), with torch/torchvision stubbed out.

Usage (normally spawned by benchmarks/corruptions.py):
    python _corruption_reference.py --suite mnist_c --code /work/refs/mnist-c \
        --images in.npy --out out.npz --jobs shot_noise:5,glass_blur:1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import warnings

import numpy as np
from PIL import Image

SINGLE_SETTING = {"stripe", "dotted_line", "zigzag", "canny_edges"}
CIFAR_END = "# /////////////// End Distortions ///////////////"


def _shim_numpy_skimage() -> None:
    np.float_ = np.float64  # type: ignore[attr-defined]
    np.int = int  # type: ignore[attr-defined]
    import skimage.filters as filters

    original = filters.gaussian

    def gaussian(image, sigma=1, *args, multichannel=None, **kwargs):
        if multichannel is not None:
            kwargs["channel_axis"] = -1 if multichannel else None
        return original(image, sigma, *args, **kwargs)

    filters.gaussian = gaussian


def _load_mnist_c(code: str) -> types.ModuleType:
    folder = code if os.path.isdir(code) else os.path.dirname(code)
    os.chdir(folder)  # corruptions.py opens 'pessimal_noise_matrix' by relative path
    sys.path.insert(0, folder)
    import corruptions  # the reference module

    return corruptions


def _load_cifar_c(code: str) -> types.ModuleType:
    path = code
    if os.path.isdir(code):
        for candidate in ("ImageNet-C/create_c/make_cifar_c.py", "make_cifar_c.py"):
            if os.path.exists(os.path.join(code, candidate)):
                path = os.path.join(code, candidate)
                break
    os.chdir(os.path.dirname(path))  # frost photographs are opened by relative path
    for stub in ("torch", "torch.utils", "torch.utils.data", "torchvision"):
        sys.modules[stub] = types.ModuleType(stub)
    for stub in ("torchvision.datasets", "torchvision.transforms"):
        sys.modules[stub] = types.ModuleType(stub)
    with open(path) as f:
        source = f.read().split(CIFAR_END)[0]
    module = types.ModuleType("make_cifar_c")
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def _apply(module: types.ModuleType, suite: str, name: str, severity: int, images: np.ndarray):
    fn = getattr(module, name)
    mode = "L" if images.ndim == 3 else "RGB"
    out = []
    for img in images:
        pil = Image.fromarray(img, mode=mode)
        y = fn(pil) if name in SINGLE_SETTING else fn(pil, severity)
        out.append(np.asarray(y, dtype=np.float32) / 255.0)
    return np.clip(np.stack(out), 0, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--suite", choices=("mnist_c", "cifar10_c"), required=True)
    p.add_argument("--code", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", required=True, help="name:severity,...")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    warnings.simplefilter("ignore")
    images = np.load(os.path.abspath(args.images))
    out_path = os.path.abspath(args.out)
    _shim_numpy_skimage()
    module = _load_mnist_c(args.code) if args.suite == "mnist_c" else _load_cifar_c(args.code)
    results: dict[str, np.ndarray] = {}
    for job in args.jobs.split(","):
        name, severity = job.split(":")
        np.random.seed(args.seed)
        start = time.process_time()  # CPU time: fair on a machine shared with other jobs
        results[job] = _apply(module, args.suite, name, int(severity), images)
        results[job + ":seconds"] = np.array(time.process_time() - start)
    np.savez(out_path, **results)


if __name__ == "__main__":
    main()
