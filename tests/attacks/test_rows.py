"""Row selection of the compact attack state: the same rows as advanced indexing, as copies."""

from __future__ import annotations

import torch

from attacks.rows import row_index, take_rows


def test_take_rows_matches_indexing_for_masks_and_indices():
    t = torch.randn(7, 3, 4, 4)
    mask = torch.tensor([True, False, True, True, False, False, True])
    assert torch.equal(take_rows(t, mask), t[mask])
    idx = torch.tensor([6, 0, 3])
    assert torch.equal(take_rows(t, idx), t[idx])
    assert row_index(mask).tolist() == [0, 2, 3, 6]
    assert take_rows(t, torch.zeros(7, dtype=torch.bool)).shape == (0, 3, 4, 4)


def test_take_rows_returns_a_copy():
    t = torch.zeros(3, 2)
    out = take_rows(t, torch.tensor([True, True, True]))
    out.add_(1.0)
    assert float(t.abs().sum()) == 0.0
