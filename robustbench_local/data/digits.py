"""scikit-learn's bundled 8x8 handwritten digits (offline), with a fixed stratified split.

Registers ``"digits"``: the 1797 images divided by 16 into ``[0, 1]``, 30% of every class in
the test split, chosen by a frozen legacy NumPy stream so the split never changes.

References:
    Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository, 1998.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import TensorDataset

from robustbench_local.data.sources import FileSources
from robustbench_local.data.specs import DATASETS, DatasetInfo, DatasetPair, DatasetSpec

DIGITS_TEST_FRACTION = 0.3
DIGITS_SEED = 0


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    return x, y, _stratified_test_mask(y, DIGITS_TEST_FRACTION, DIGITS_SEED)


def _stratified_test_mask(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mark ``round(fraction * n_c)`` random samples of every class ``c`` as test samples."""
    rng = np.random.RandomState(seed)  # legacy stream, frozen: the split never changes
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n_test = int(np.rint(fraction * len(members)))
        is_test[rng.permutation(members)[:n_test]] = True
    return is_test


DIGITS = DatasetSpec(DatasetInfo("digits", 10, (1, 8, 8), (0.3061,), (0.3766,)))


@DATASETS.register("digits", spec=DIGITS)
def load_digits_dataset(spec: DatasetSpec, src: FileSources) -> DatasetPair:
    """scikit-learn's 8x8 digits /16; a 70/30 split stratified per class with seed 0."""
    x, y, is_test = _digits_arrays()

    def part(mask: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(x[mask].copy()), torch.from_numpy(y[mask].copy()))

    return part(~is_test), part(is_test)


__all__ = ["DIGITS", "DIGITS_SEED", "DIGITS_TEST_FRACTION", "load_digits_dataset"]
