"""A user repository no one here wrote, built in a tmp dir for the user-model and user-data tests.

Its own package ``userrepo_nets`` (an unregistered CNN, variants returning a dict, a dataclass or
a tuple, a net with a required constructor argument, data loaders), a CNN trained by its own loop
on scikit-learn's 8x8 digits and saved as a plain state dict, and its test images as a PNG folder
(also split into train/ and test/) and as an ``.npz`` (uint8, no channel dimension).
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

PACKAGE = "userrepo_nets"
PER_CLASS = 4  # test images per class in the folders (40 PNGs)

NETS = '''
"""The user's networks."""
import dataclasses

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.drop = nn.Dropout(0.0)
        self.fc = nn.Linear(width * 8 * 8, num_classes)

    def forward(self, x):
        return self.fc(self.drop(torch.relu(self.conv(x)).flatten(1)))


class DictCNN(SmallCNN):
    def forward(self, x):
        return {"logits": super().forward(x), "features": x.flatten(1)}


@dataclasses.dataclass
class Output:
    logits: torch.Tensor
    hidden: torch.Tensor


class HFStyleCNN(SmallCNN):
    def forward(self, x):
        return Output(logits=super().forward(x), hidden=x.flatten(1))


class TupleCNN(SmallCNN):
    def forward(self, x):
        return super().forward(x), x.flatten(1)


class NeedsWidth(SmallCNN):
    def __init__(self, width: int) -> None:
        super().__init__(width=width)
'''

DATA = '''
"""The user's data loaders."""
import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

FOLDER = {folder!r}


def _arrays(split):
    with np.load(FOLDER + "/digits.npz") as f:
        return (f["x"], f["y"]) if split == "test" else (f["x_train"], f["y_train"])


def load_test():
    return _arrays("test")


def load_pair():
    def part(split):
        x, y = _arrays(split)
        return TensorDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y))
    return part("train"), part("test")


class Items(Dataset):
    def __init__(self, labels=None):
        self.x, self.y = _arrays("test")
        if labels is not None:
            self.y = labels

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def load_items(n=None):
    items = Items()
    if n is not None:
        items.y = items.y[:n]
    return items


def load_items_half():
    return Items(labels=np.full(40, 2.5))


def load_float_labels():
    x, y = _arrays("test")
    return x, y.astype(np.float64) + 0.7


not_a_function = 3


def load_nothing():
    return "nothing"
'''


@dataclass(frozen=True)
class UserRepo:
    """Where the fixture repository put everything, and the trained model's reference data."""

    root: Path
    state_dict: Path
    png: Path
    png_split: Path
    npz: Path
    x_test: torch.Tensor
    y_test: torch.Tensor
    accuracy: float


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, 8, 8] digits (0-16 scaled to 0-255) and their labels."""
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return x, d.target.astype(np.int64)


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """PER_CLASS test images per class (first ones), the rest for training."""
    test_idx = np.concatenate([np.flatnonzero(y == c)[:PER_CLASS] for c in range(10)])
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[test_idx] = False
    return x[train_mask], y[train_mask], x[test_idx], y[test_idx]


def _write_pngs(folder: Path, x: np.ndarray, y: np.ndarray) -> None:
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (folder / f"digit_{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"digit_{label}" / f"{i:03d}.png")


def _train(x: torch.Tensor, y: torch.Tensor, nets) -> nn.Module:
    """The user's own training loop (plain full-batch gradient descent with momentum)."""
    torch.manual_seed(0)
    model = nets.SmallCNN(width=4)
    velocity = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(60):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, v in zip(model.parameters(), velocity, strict=True):
                p.sub_(v.mul_(0.9).add_(p.grad), alpha=0.2)
    return model.eval()


def build_user_repo(root: Path) -> UserRepo:
    """Write the package and data files under ``root``, train and save the user's CNN."""
    pkg = root / PACKAGE
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(NETS))
    (pkg / "data.py").write_text(textwrap.dedent(DATA).replace("{folder!r}", repr(str(root))))
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import importlib

    nets = importlib.import_module(f"{PACKAGE}.nets")
    x_train, y_train, x_test, y_test = _split(*_digits())
    np.savez(root / "digits.npz", x=x_test, y=y_test, x_train=x_train, y_train=y_train)
    _write_pngs(root / "pngs", x_test, y_test)
    _write_pngs(root / "pngs_split" / "test", x_test, y_test)
    _write_pngs(root / "pngs_split" / "train", x_train[:30], y_train[:30])
    as_float = lambda a: torch.from_numpy(a).float().div(255).unsqueeze(1)  # noqa: E731
    model = _train(as_float(x_train), torch.from_numpy(y_train), nets)
    torch.save(model.state_dict(), root / "smallcnn_state.pt")
    xt, yt = as_float(x_test), torch.from_numpy(y_test)
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    return UserRepo(
        root, root / "smallcnn_state.pt", root / "pngs", root / "pngs_split",
        root / "digits.npz", xt, yt, accuracy,
    )  # fmt: skip


_BUILT: list[UserRepo] = []


def user_repo_once(tmp_path_factory) -> UserRepo:
    """The session's one user repository (its package is importable once per process)."""
    if not _BUILT:
        _BUILT.append(build_user_repo(tmp_path_factory.mktemp("user_repo")))
    return _BUILT[0]


__all__ = ["PACKAGE", "PER_CLASS", "UserRepo", "build_user_repo", "user_repo_once"]
