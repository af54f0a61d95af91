"""Restarts, written once: later runs see only the survivors; successes and high losses win."""

from __future__ import annotations

import torch

import attacks
from attacks.restarts import BestOf, run_restarts


def test_later_runs_attack_only_the_survivors_and_keep_the_best():
    x = torch.zeros(4, 2)
    seen: list[list[int]] = []

    def single_run(rows: torch.Tensor, restart: int):
        seen.append(rows.tolist())
        cand = torch.full((len(rows), 2), float(restart + 1))
        loss = torch.tensor([1.0, 3.0, 2.0, 0.5])[rows] * (1 if restart == 0 else 2 - restart)
        hit = rows == restart  # run r breaks sample r
        return cand, loss, hit

    best = run_restarts(x, 3, single_run)
    assert seen == [[0, 1, 2, 3], [1, 2, 3], [2, 3]]
    assert best.done.tolist() == [True, True, True, False]
    # sample 0 broken by run 0, 1 by run 1, 2 by run 2; sample 3: run 1's loss (0.5) ties run
    # 0's, run 2's (0.0) is lower, so run 0's candidate stays
    assert best.x[:, 0].tolist() == [1.0, 2.0, 3.0, 1.0]
    assert best.loss.tolist() == [1.0, 3.0, 0.0, 0.5]


def test_shared_state_stops_when_everything_is_broken():
    x = torch.zeros(3, 1)
    best = BestOf(x)
    calls = []

    def breaks_all(rows, restart):
        calls.append(restart)
        return torch.ones(len(rows), 1), torch.zeros(len(rows)), torch.ones(len(rows), dtype=bool)

    run_restarts(x, 5, breaks_all, best)
    run_restarts(x, 5, breaks_all, best)  # a second loop (e.g. the next target class)
    assert calls == [0]
    assert best.pending().numel() == 0


def test_more_restarts_are_never_weaker(digits_model, digits_batch):
    x, y = digits_batch
    for name in ("pgd", "apgd_ce"):
        one, three = (
            attacks.create(name, steps=5, restarts=r)(digits_model, x, y, eps=0.06) for r in (1, 3)
        )
        assert float(three.robust_accuracy) <= float(one.robust_accuracy)
        assert bool((three.success >= one.success).all())  # the first run is the same run
        survivors = int((~one.success).sum())
        assert three.n_backward - one.n_backward >= 2 * 5 * survivors * 0.9
