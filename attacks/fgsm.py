"""Fast gradient sign method (FGSM) and fast gradient method (FGM, l2): PGD with one step."""

from __future__ import annotations

from attacks.base import register_attack
from attacks.pgd import PGD
from attacks.threat import Norm


@register_attack("fgsm")
class FGSM(PGD):
    r"""FGSM / FGM: one step of size ``eps`` along the sign (linf) or normalised (l2) gradient.

    Paper: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    https://arxiv.org/abs/1412.6572. The random start variant (FGSM-RS, step ``1.25 eps``) is
    from Wong et al., "Fast is better than free: Revisiting adversarial training", ICLR 2020.

    Threat model: linf (FGSM) or l2 (FGM), fixed budget ``eps``.

    Args:
        norm: ``"linf"`` (default) or ``"l2"``.
        random_start: Start from a uniform point in the ball (default False, the paper's FGSM).
        rel_step_size: Step as a fraction of eps (default 1.0; Wong et al. use 1.25 with a
            random start). The result is always projected back into the ball.
        step_size: Absolute step size, overriding ``rel_step_size``.
        loss: ``"ce"`` (default) or ``"cw"``.
        **kwargs: ``bounds``, ``targeted``, ``seed``, ``eval_mode``.

    Example:
        >>> res = attacks.create("fgsm")(model, x, y, eps=0.1)

    """

    def __init__(
        self,
        norm: str | Norm = Norm.LINF,
        *,
        random_start: bool = False,
        rel_step_size: float | None = 1.0,
        step_size: float | None = None,
        loss: str = "ce",
        **kwargs,
    ) -> None:
        super().__init__(
            norm,
            steps=1,
            step_size=step_size,
            rel_step_size=rel_step_size,
            random_start=random_start,
            restarts=1,
            loss=loss,
            early_stop=False,
            **kwargs,
        )
