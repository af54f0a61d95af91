"""AttackSuite: several attacks in turn, each only on the samples still robust."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from attacks.base import Attack, AttackContext, FixedBudgetAttack


class AttackSuite(FixedBudgetAttack):
    """Per-sample worst case over a list of attacks, at the cost of running each on survivors.

    Each attack runs in the order given on the samples that every earlier attack failed to
    break; a sample counts as robust only if no attack breaks it. This is the cascade of
    AutoAttack (Croce & Hein, ICML 2020), never an average over attacks. The suite is a
    fixed-budget attack; its members may be of either kind (a minimum-norm member is
    thresholded at the suite's eps). Members get the sample ids of the rows they attack, so
    their random draws do not depend on which samples earlier members broke.

    Args:
        attacks: Attack instances sharing one norm and one set of bounds (untargeted).
        seed: Seed of the suite itself (each member keeps its own seed).

    Example:
        >>> suite = attacks.AttackSuite([attacks.create("apgd_ce"), attacks.create("apgd_dlr")])
        >>> res = suite(model, x, y, eps=0.3)
        >>> res.details["broken_by"]   # {eps: {attack name: samples it broke}}

    References:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
        parameter-free attacks", ICML 2020.

    """

    name = "suite"

    def __init__(self, attacks: Sequence[Attack], *, seed: int = 0) -> None:
        members = list(attacks)
        if not members:
            raise ValueError("AttackSuite needs at least one attack")
        for a in members:
            if not isinstance(a, Attack):
                raise TypeError(
                    f"AttackSuite members must be Attack instances, got {type(a).__name__}"
                )
            if a.targeted:
                raise ValueError(f"AttackSuite members must be untargeted; {a.name} is targeted")
        first = members[0]
        if any(a.norm != first.norm or a.bounds != first.bounds for a in members):
            raise ValueError("AttackSuite members must share one norm and one set of bounds")
        super().__init__(first.norm, bounds=first.bounds, seed=seed)
        self._members = members

    @property
    def members(self) -> list[Attack]:
        """The attacks, in the order they run."""
        return list(self._members)

    def config(self) -> dict:
        """The suite's settings: each member's config in order."""
        return {"name": self.name, "attacks": [a.config() for a in self._members]}

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """Run the members in turn on the survivors; return the first successful candidate."""
        cand = x.clone()
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        broken_by: dict[str, int] = {}
        for atk in self._members:
            idx = alive.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            res = atk(ctx.model, x[idx], y[idx], eps=eps, ids=ctx.ids[idx])
            ctx.n_forward += res.n_forward
            ctx.n_backward += res.n_backward
            cand[idx] = res.x_adv
            alive[idx] = ~res.success
            broken_by[atk.name] = broken_by.get(atk.name, 0) + int(res.success.sum())
        ctx.details.setdefault("broken_by", {})[eps] = broken_by
        return cand
