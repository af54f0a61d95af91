"""Fixed, seeded subsets of a dataset: the same samples for the same seed, on any version."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from attacks.validation import check_positive_int
from defenses.data import tensors_of


def sample_indices(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` distinct indices out of ``range(n_total)``, sorted, the same for the same seed.

    Uses NumPy's legacy ``RandomState`` whose stream is frozen across NumPy versions, so the
    selection (and any hash of it) is stable.

    Raises:
        ValueError: If ``n`` is not in ``[0, n_total]`` or ``seed`` is negative.
    """
    for label, value in (("n_total", n_total), ("n", n), ("seed", seed)):
        check_positive_int(label, value, minimum=0)
    if n > n_total:
        raise ValueError(f"cannot sample n={n} indices out of {n_total}; pass n <= {n_total}")
    perm = np.random.RandomState(int(seed)).permutation(int(n_total))[: int(n)]
    return torch.from_numpy(np.sort(perm).astype(np.int64))


def subset(dataset: Dataset, n: int, seed: int = 0) -> TensorDataset:
    """A deterministic random subset of ``n`` samples (in dataset order) as a TensorDataset.

    Raises:
        TypeError: If ``dataset`` has no length.
        ValueError: If ``n`` exceeds the dataset size.
    """
    if not hasattr(dataset, "__len__"):
        raise TypeError(f"subset needs a sized dataset, got {type(dataset).__name__}")
    idx = sample_indices(len(dataset), n, seed)
    if isinstance(dataset, TensorDataset):
        return TensorDataset(*(t[idx] for t in dataset.tensors))
    if idx.numel() == 0:
        raise ValueError("subset of a non-TensorDataset needs n >= 1")
    return TensorDataset(*tensors_of(dataset, idx))


__all__ = ["sample_indices", "subset"]
