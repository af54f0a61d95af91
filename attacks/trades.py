"""TRADES' inner maximisation: PGD on the KL divergence to the clean prediction."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attacks.base import AttackContext, FixedBudgetAttack, register_attack
from attacks.pgd import check_step_sizes, step_size_at
from attacks.threat import Norm, normalize_gradient, project_and_clip
from attacks.validation import check_number, check_positive_int


def kl_to_clean(p_clean: Tensor):
    """Per-sample ``KL(p_clean || softmax(logits))`` as a function of the logits."""

    def loss(logits: Tensor) -> Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="none").sum(1)

    return loss


@register_attack("trades_kl")
class TRADESKL(FixedBudgetAttack):
    r"""TRADES-KL: find ``x'`` in the ball that maximises ``KL(f(x) || f(x'))``.

    Paper: Zhang, Yu, Jiao, Xing, El Ghaoui & Jordan, "Theoretically Principled Trade-off
    between Robustness and Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573

    The inner maximisation of TRADES training, as in the authors' code: start at
    ``x + start_std * N(0, I)`` (``start_std = 0.001``), then ``steps`` ascent steps (sign of
    the gradient for linf, normalised gradient for l2) on the KL divergence between the clean
    and the adversarial softmax outputs, each projected onto the ball and the input box. The
    labels are not used (the loss needs none) and there is no early stop: every step is taken.
    As an evaluation attack it is weaker than PGD on cross-entropy; it is registered so that
    training calls it through the sealed interface (``attack.perturb``).

    Threat model: linf or l2, fixed budget ``eps``; untargeted only.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: Ascent steps (default 40, the paper's MNIST setting).
        step_size: Absolute step (the paper uses 0.01 for eps 0.3 on MNIST); overrides
            ``rel_step_size``.
        rel_step_size: Step as a fraction of eps (default ``2.5 / steps``, as PGD).
        start_std: Standard deviation of the Gaussian start (default 0.001).
        **kwargs: ``bounds``, ``seed``, ``eval_mode`` (see :class:`~attacks.base.Attack`).

    Shape:
        - x: ``[N, ...]`` in bounds; y: ``[N]`` (unused); result x_adv: like x.

    Example:
        >>> kl = attacks.create("trades_kl", steps=40, step_size=0.01)
        >>> x_adv = kl.perturb(model, x, y, eps=0.3)

    References:
        Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
        ICML 2019.

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        steps: int = 40,
        step_size: float | None = None,
        rel_step_size: float | None = None,
        start_std: float = 1e-3,
        **kwargs,
    ) -> None:
        super().__init__(norm, **kwargs)
        if self.targeted:
            raise ValueError("trades_kl is untargeted (its loss has no labels); use pgd")
        self.steps = check_positive_int("steps", steps)
        self.step_size, self.rel_step_size = check_step_sizes(step_size, rel_step_size)
        self.start_std = check_number("start_std", start_std)

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor, eps: float) -> Tensor:
        """``steps`` projected ascent steps on ``KL(f(x) || f(x'))`` from a Gaussian start."""
        alpha = step_size_at(eps, self.steps, self.step_size, self.rel_step_size)
        loss_fn = kl_to_clean(F.softmax(ctx.logits(x), dim=1))
        noise = ctx.normal(None, tuple(x.shape[1:]), ("start",)).to(x.device, x.dtype)
        x_adv = project_and_clip(x, x + self.start_std * noise, self.norm, eps, ctx.bounds)
        for _ in range(self.steps):
            _, grad, _ = ctx.loss_and_grad(x_adv, loss_fn)
            step = x_adv + alpha * normalize_gradient(grad, self.norm)
            x_adv = project_and_clip(x, step, self.norm, eps, ctx.bounds)
        return x_adv


__all__ = ["TRADESKL", "kl_to_clean"]
